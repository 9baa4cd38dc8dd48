"""Render the startup script a VM (or the embedded provider) boots from.

Every value is interpolated through shlex.quote; the only unquoted parts are the
provider's own fixed snippets and integers. The VM agent travels inside the script as
a base64 tar.gz, so nothing has to be fetched before the script can report.
"""

from __future__ import annotations

import base64
import gzip
import io
import re
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol
from .clouds.registry import CLOUDS, store_cloud
from .errors import KitError, UsageError

PACKAGE_DIR = Path(__file__).resolve().parent
# What every VM agent needs; the clouds add theirs (see clouds/base.py: vm_modules, store_modules).
AGENT_MODULES = (
    "__init__.py", "errors.py", "settings.py", "protocol.py", "vm_agent.py",
    "storage/__init__.py", "storage/base.py", "storage/paths.py", "storage/transfer.py", "clouds/__init__.py",
)

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


def _compact(source: bytes) -> bytes:
    """The module without docstrings and comments: it travels in user data (16 KB on EC2)."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree).encode()


def agent_modules(provider: str, store_url: str) -> list[str]:
    """The agent's modules, its provider's VM pieces and the one store this run's bucket needs."""
    vm, store = CLOUDS[provider], store_cloud(store_url)
    packages = sorted({f"clouds/{vm.name}/__init__.py", f"clouds/{store.name}/__init__.py"})
    return [*AGENT_MODULES, *packages, *vm.vm_modules, *store.store_modules]


def agent_payload(provider: str, store_url: str) -> str:
    """The agent's modules as base64 tar.gz."""
    modules = agent_modules(provider, store_url)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for rel in modules:
            data = _compact((PACKAGE_DIR / rel).read_bytes())
            info = tarfile.TarInfo(f"researchkit_py/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, 315532800
            tar.addfile(info, io.BytesIO(data))
    gz = gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)
    b64 = base64.b64encode(gz).decode()
    return "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))


def render_startup_script(plan: ScriptPlan) -> str:
    q = shlex.quote
    if not plan.command.strip():
        raise UsageError("the command to run is empty; pass it as the first argument of `cloud-run run`")
    check_no_secrets(plan.env)
    exports = "\n".join(f"export {k}={q(v)}" for k, v in sorted(plan.env.items())) or "# (no --env values)"
    store = store_cloud(plan.store_url)
    return _TEMPLATE.format(
        # stage and cause names as the protocol spells them
        **{stage: stage for stage in protocol.STAGES}, DONE=protocol.DONE,
        EXIT=protocol.EXIT, TIMEOUT=protocol.TIMEOUT, TERMINATED=protocol.TERMINATED,
        run_id=plan.run_id,
        provider=plan.provider,
        deadline_lines=plan.deadline_lines.strip() or ":",
        self_delete_lines=_indent(plan.self_delete_lines.strip() or ":"),
        q_run_id=q(plan.run_id),
        q_store=q(plan.store_url),
        q_store_class=q(store.store),
        q_provider=q(plan.provider),
        q_bundle=q(plan.bundle_key),
        q_command=q(plan.command),
        q_results=q(plan.results_subdir),
        soft=int(plan.soft_deadline_seconds),
        heartbeat=max(1, int(plan.heartbeat_seconds)),
        has_data=1 if plan.has_data else 0,
        q_vm_python=q(plan.vm_python),
        q_agent_import=q(f"import {store.vm_sdk or 'json'}"),
        q_packages=" ".join(q(p) for p in store.vm_packages) or "''",
        payload=agent_payload(plan.provider, plan.store_url),
        gpu_check=(f'RK_CAUSE={protocol.GPU_UNAVAILABLE}; rk gpu-check "$PWD" {q(plan.gpu)} {int(plan.gpu_wait_seconds)}; '
                   'RK_CAUSE=""') if plan.gpu else ":",
        exports=exports,
    )


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
RK_PROVIDER={q_provider}
RK_BUNDLE_KEY={q_bundle}
RK_COMMAND={q_command}
RK_RESULTS_SUBDIR={q_results}
RK_SOFT_DEADLINE={soft}
RK_HEARTBEAT={heartbeat}
RK_HAS_DATA={has_data}
RK_VM_PYTHON={q_vm_python}
RK_ROOT="${{RK_VM_ROOT:-/var/lib/researchkit}}/$RK_RUN_ID"
export RK_RUN_ID RK_STORE RK_STORE_CLASS RK_PROVIDER RK_ROOT
RK_STAGE={BOOT}
RK_CMD_RC=""
RK_CAUSE=""
RK_HB_PID=""
RK_CMD_PID=""
RK_AGENT_PY=python3

mkdir -p "$RK_ROOT/agent"
exec >>"$RK_ROOT/run.log" 2>&1
echo "researchkit: run $RK_RUN_ID booting on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"

rk_self_delete() {{
{self_delete_lines}
}}

# From the agent's own directory: the project may hold another copy of researchkit_py.
rk() {{
  (cd "$RK_ROOT/agent" && "$RK_AGENT_PY" -m researchkit_py.vm_agent "$@")
}}

# Whatever happens from here on, the last log and the status go up and the VM goes away.
rk_finish() {{
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$RK_CMD_PID" ]]; then kill -TERM "$RK_CMD_PID" 2>/dev/null; wait "$RK_CMD_PID" 2>/dev/null; fi
  if [[ -n "$RK_HB_PID" ]]; then kill "$RK_HB_PID" 2>/dev/null; fi
  echo "researchkit: finishing at stage $RK_STAGE (script exit $rc)"
  rk finish "$RK_STAGE" "$RK_CMD_RC" "$RK_CAUSE" || echo "researchkit: could not report the final status"
  rk_self_delete
}}
trap rk_finish EXIT
trap 'RK_CAUSE=${{RK_CAUSE:-{TERMINATED}}}; exit 143' TERM
trap 'RK_CAUSE=${{RK_CAUSE:-{TERMINATED}}}; exit 130' INT

# 1. The agent (embedded below) and a Python that can reach the bucket.
base64 -d <<'RK_AGENT_EOF' | tar -xz -C "$RK_ROOT/agent"
{payload}
RK_AGENT_EOF
if ! python3 -c {q_agent_import} 2>/dev/null; then
  echo "researchkit: installing the agent's client library"
  if ! python3 -m venv "$RK_ROOT/agent-venv"; then
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv "$RK_ROOT/agent-venv"
  fi
  "$RK_ROOT/agent-venv/bin/pip" install --quiet {q_packages}
  RK_AGENT_PY="$RK_ROOT/agent-venv/bin/python"
fi
rk status {BOOT}

# 2. Code, data and requirements.
RK_STAGE={SETUP}
RK_WORK="$RK_ROOT/work"
rk status {SETUP} -- get-bundle "$RK_BUNDLE_KEY" "$RK_WORK"
if [[ "$RK_HAS_DATA" == 1 ]]; then rk get-data "$RK_WORK"; fi
cd "$RK_WORK"
if [[ -n "$RK_VM_PYTHON" ]]; then
  echo "researchkit: using the pre-provisioned Python $RK_VM_PYTHON as it is"
  PATH="$(dirname "$RK_VM_PYTHON"):$PATH"
elif [[ -f requirements.txt ]]; then
  echo "researchkit: installing requirements.txt"
  python3 -m venv --system-site-packages "$RK_ROOT/venv"
  "$RK_ROOT/venv/bin/pip" install --quiet -r requirements.txt
  PATH="$RK_ROOT/venv/bin:$PATH"
fi
export PATH
{exports}
export RESULTS_DIR="$RK_WORK/$RK_RESULTS_SUBDIR"
mkdir -p "$RESULTS_DIR"
# A GPU the run asked for must work in the run's environment before the command starts.
{gpu_check}

# 3. The command, under its soft deadline, with a heartbeat that also ships the log.
RK_STAGE={RUN}
echo "researchkit: running: $RK_COMMAND"
rk heartbeat -- status {RUN}  # the log says what runs before the status does: a VM lost right after still tells
( while sleep "$RK_HEARTBEAT"; do rk heartbeat || true; done ) &
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
rk status {UPLOAD} -- push-results "$RESULTS_DIR"
RK_STAGE={DONE}
"""
