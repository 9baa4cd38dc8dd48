"""Render the startup script a VM (or the embedded provider) boots from.

Every value is interpolated through shlex.quote; the only unquoted parts are the
provider's own fixed snippets and integers. The VM agent's core travels inside the script
as a base64 tar.gz (vm_payload.py) and needs only python3's standard library on a cloud VM,
so the VM reports (status BOOT, and whatever fails later) before anything is installed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from . import protocol
from .errors import KitError, UsageError
from .vm_agent import CANCEL_RC
from .vm_payload import agent_payload, agent_rest, vm_agent

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|API_KEY|SESSION_KEY", re.I)
_SECRET_VALUE = re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|\"private_key\"\s*:")


@dataclass
class ScriptPlan:
    run_id: str
    store_url: str
    provider: str
    bundle_key: str
    command: str
    soft_deadline_seconds: int
    heartbeat_seconds: int
    deadline_lines: str  # provider snippet, runs first
    self_delete_lines: str  # provider snippet, body of rk_self_delete
    env: dict[str, str] = field(default_factory=dict)
    results_subdir: str = "results"
    has_data: bool = False
    vm_python: str = ""  # a pre-provisioned Python on the image: used as-is, nothing installed
    gpu: str = ""  # MODEL:COUNT the run asked for: checked before the command starts
    gpu_wait_seconds: int = 300  # how long the check waits for a driver still being installed


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise UsageError(f"--env {pair!r}: write it as NAME=value with NAME a shell variable name")
        env[key] = value
    return env


def check_no_secrets(env: dict[str, str]) -> None:
    for key, value in env.items():
        if _SECRET_NAME.search(key) or _SECRET_VALUE.search(value):
            raise KitError(
                f"--env {key} looks like a credential; it would be stored in the VM's metadata. "
                "Give the VM's service account / instance profile the access instead, or read it from a secret manager"
            )


def render_startup_script(plan: ScriptPlan) -> str:
    q = shlex.quote
    if not plan.command.strip():
        raise UsageError("the command to run is empty; pass it as the first argument of `cloud-run run`")
    check_no_secrets(plan.env)
    exports = "\n".join(f"export {k}={q(v)}" for k, v in sorted(plan.env.items())) or "# (no --env values)"
    agent = vm_agent(plan.provider, plan.store_url)
    return _TEMPLATE.format(
        # stage and cause names as the protocol spells them
        **{stage: stage for stage in protocol.STAGES}, DONE=protocol.DONE,
        EXIT=protocol.EXIT, TIMEOUT=protocol.TIMEOUT, TERMINATED=protocol.TERMINATED,
        CANCELLED=protocol.CANCELLED_CAUSE, CANCEL_RC=CANCEL_RC,
        run_id=plan.run_id,
        provider=plan.provider,
        deadline_lines=plan.deadline_lines.strip() or ":",
        self_delete_lines=_indent(plan.self_delete_lines.strip() or ":"),
        q_run_id=q(plan.run_id),
        q_store=q(plan.store_url),
        q_store_class=q(agent.store_class),
        q_bucket_class=q(agent.bucket_class),
        q_agent_key=q(agent_rest(plan.provider, plan.store_url)[0]),
        q_provider=q(plan.provider),
        q_bundle=q(plan.bundle_key),
        q_command=q(plan.command),
        q_results=q(plan.results_subdir),
        soft=int(plan.soft_deadline_seconds),
        heartbeat=max(1, int(plan.heartbeat_seconds)),
        has_data=1 if plan.has_data else 0,
        q_vm_python=q(plan.vm_python),
        q_agent_python=q(agent.python),
        **agent_lines(agent),
        payload=agent_payload(plan.provider, plan.store_url),
        gpu_check=(f'rk_step "checking the GPU"; RK_CAUSE={protocol.GPU_UNAVAILABLE}; '
                   f'rk gpu-check "$PWD" {q(plan.gpu)} {int(plan.gpu_wait_seconds)}; RK_CAUSE=""') if plan.gpu else ":",
        exports=exports,
    )


def agent_lines(agent) -> dict[str, str]:
    """How the script calls its agent: a Python start per call, or (vm_serve.py) one process
    that answers them all."""
    python = '"$RK_AGENT_PY" -m researchkit_py.vm_agent'
    direct = f'(cd "$RK_ROOT/agent" && {python} "$@")'
    if not agent.serve:
        return {"rk_body": f"  {direct}", "rk_ask": "", "serve_lines": "", "agent_done": ""}
    from . import vm_serve

    return {"rk_body": vm_serve.RK_BODY.format(direct=direct), "rk_ask": vm_serve.RK_ASK,
            "serve_lines": vm_serve.SERVE_LINES.format(python=python), "agent_done": "\n  rk_agent_done"}


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


_TEMPLATE = r"""#!/bin/bash
# researchkit startup script for run {run_id} on {provider}.
# Generated by researchkit_py/startup.py: change the generator, not this file.
# The user's command and values are single-quoted on purpose: they must not expand here.
# shellcheck disable=SC2016
set -euo pipefail
# The hard deadline comes first, before anything that could fail or hang.
{deadline_lines}

RK_RUN_ID={q_run_id}
RK_STORE={q_store}
RK_STORE_CLASS={q_store_class}
RK_BUCKET_CLASS={q_bucket_class}
RK_PROVIDER={q_provider}
RK_AGENT_KEY={q_agent_key}
RK_BUNDLE_KEY={q_bundle}
RK_COMMAND={q_command}
RK_RESULTS_SUBDIR={q_results}
RK_SOFT_DEADLINE={soft}
RK_HEARTBEAT={heartbeat}
RK_HAS_DATA={has_data}
RK_VM_PYTHON={q_vm_python}
RK_AGENT_PY={q_agent_python}
RK_ROOT="${{RK_VM_ROOT:-/var/lib/researchkit}}/$RK_RUN_ID"
export RK_RUN_ID RK_STORE RK_STORE_CLASS RK_BUCKET_CLASS RK_PROVIDER RK_ROOT
RK_STAGE={BOOT}
RK_STEP=""
RK_CMD_RC=""
RK_CAUSE=""
RK_HB_PID=""
RK_CMD_PID=""

mkdir -p "$RK_ROOT/agent"
exec 3>&2 >>"$RK_ROOT/run.log" 2>&1  # fd 3 stays the console
echo "researchkit: run $RK_RUN_ID booting on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"

rk_self_delete() {{
{self_delete_lines}
}}

# From the agent's own directory: the project may hold another copy of researchkit_py.
rk() {{
{rk_body}
}}
{rk_ask}
# A step of the setup: a line in the log; if it fails, the final status names it, with the
# reason its failing command left.
rk_step() {{
  RK_STEP=$1
  rm -f "$RK_ROOT/reason"
  echo "researchkit: $1"
}}

# apt as a first boot has it: unattended-upgrades may hold its locks for minutes. Its output
# goes to apt.log; what failed, to the log.
rk_apt() {{
  local log="$RK_ROOT/apt.log" try
  export DEBIAN_FRONTEND=noninteractive
  for try in 1 2 3; do  # update does not wait for the lists' lock: try again
    if apt-get -q update >"$log" 2>&1; then break; fi
    sleep $((try * 5))
  done
  if ! apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 install -y --no-install-recommends "$@" \
      >>"$log" 2>&1; then
    grep -E '^(E|W):' "$log" | tail -n 5
    return 1
  fi
}}

# Whatever happens from here on, the last log and the status go up and the VM goes away.
rk_finish() {{
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$RK_CMD_PID" ]]; then kill -TERM "$RK_CMD_PID" 2>/dev/null; wait "$RK_CMD_PID" 2>/dev/null; fi
  if [[ -n "$RK_HB_PID" ]]; then kill "$RK_HB_PID" 2>/dev/null; fi
  echo "researchkit: finishing at stage $RK_STAGE (script exit $rc)"
  if [[ "$RK_CAUSE" == {CANCELLED} && "$RK_STAGE" == {RUN} ]]; then  # asked to stop: keep what the command made
    rk push-results "$RESULTS_DIR"
  fi
  if ! rk finish "$RK_STAGE" "$RK_CMD_RC" "$RK_CAUSE" "$RK_STEP"; then
    echo "researchkit: could not report the final status"
    tail -n 20 "$RK_ROOT/run.log" >&3  # the console keeps what the bucket could not
  fi
  rk_self_delete{agent_done}
}}
# A signal ends the run with its cause, which wins over the stage's (protocol.STOPPED).
rk_stop() {{
  RK_CAUSE=$1
  exit "$2"
}}
trap rk_finish EXIT
trap 'rk_stop {TERMINATED} 143' TERM
trap 'rk_stop {TERMINATED} 130' INT
trap 'rk_stop {CANCELLED} 130' USR1  # from the heartbeat loop: the client asked the run to stop

# The heartbeat, from RUN on: it ships the log and looks for the client's request to stop
# (vm_agent heartbeat exits CANCEL_RC then). The command runs in the background, so the trap
# stops it at once. A VM still in its setup (no extra Python start each beat there) finds the
# request when it reports BOOT or SETUP, or with its first RUN heartbeat, and stops before the
# command starts.
rk_beat() {{
  local rc
  while sleep "$RK_HEARTBEAT"; do
    rc=0
    rk heartbeat || rc=$?
    if [[ "$rc" == {CANCEL_RC} ]]; then
      echo "researchkit: the client asked the run to stop"
      kill -USR1 "$1"
      return
    fi
  done
}}

# 1. python3, the agent's core (embedded below), and status BOOT: nothing else is needed to report.
if ! command -v "$RK_AGENT_PY" >/dev/null; then
  rk_step "installing python3 with apt (the image has none)"
  rk_apt python3 || {{ echo "researchkit: no python3, so nothing can report to the bucket" | tee /dev/fd/3; exit 1; }}
fi
base64 -d <<'RK_AGENT_EOF' | tar -xz -C "$RK_ROOT/agent"
{payload}
RK_AGENT_EOF
{serve_lines}rk_step "reporting to the bucket"
rk boot

# 2. The rest of the agent, the code, the data, the environment.
RK_STAGE={SETUP}
RK_WORK="$RK_ROOT/work"
rk_step "downloading the code"
rk status {SETUP} -- get-agent "$RK_AGENT_KEY" -- get-bundle "$RK_BUNDLE_KEY" "$RK_WORK"
if [[ "$RK_HAS_DATA" == 1 ]]; then
  rk_step "downloading the data"
  rk get-data "$RK_WORK"
fi
cd "$RK_WORK"
{exports}
if [[ -n "$RK_VM_PYTHON" ]]; then
  echo "researchkit: using the pre-provisioned Python $RK_VM_PYTHON as it is"
  PATH="$(dirname "$RK_VM_PYTHON"):$PATH"
elif [[ -f requirements.txt ]]; then
  rk_step "installing requirements.txt"
  rk requirements "$RK_WORK/requirements.txt" "$RK_ROOT/venv"
  PATH="$RK_ROOT/venv/bin:$PATH"
fi
if ! command -v python >/dev/null; then  # `python` is python3, as in a venv
  mkdir -p "$RK_ROOT/bin"
  ln -sf "$(command -v python3)" "$RK_ROOT/bin/python"
  PATH="$RK_ROOT/bin:$PATH"
fi
export PATH
export RESULTS_DIR="$RK_WORK/$RK_RESULTS_SUBDIR"
mkdir -p "$RESULTS_DIR"
# A GPU the run asked for must work in the run's environment before the command starts.
{gpu_check}

# 3. The command, under its soft deadline, with a heartbeat that also ships the log.
RK_STAGE={RUN}
RK_STEP=""
echo "researchkit: running: $RK_COMMAND"
rk heartbeat -- status {RUN}  # the log says what runs before the status does: a VM lost right after still tells
rk_beat "$$" &
RK_HB_PID=$!
RK_T0=$SECONDS
set +e
timeout --kill-after=30 "$RK_SOFT_DEADLINE" bash -c "$RK_COMMAND" &
RK_CMD_PID=$!
wait "$RK_CMD_PID"
RK_CMD_RC=$?
set -e
RK_CMD_PID=""
RK_CAUSE="{EXIT}"
if [[ "$RK_CMD_RC" == 124 || "$RK_CMD_RC" == 137 ]] && (( SECONDS - RK_T0 >= RK_SOFT_DEADLINE )); then
  RK_CAUSE={TIMEOUT}
fi
echo "researchkit: command exited $RK_CMD_RC"

# 4. Results, then the checksum manifest that marks them complete.
RK_STAGE={UPLOAD}
rm -f "$RK_ROOT/reason"
rk status {UPLOAD} -- push-results "$RESULTS_DIR"
RK_STAGE={DONE}
"""
