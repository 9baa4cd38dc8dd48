"""The embedded VM's agent as one process for all of the startup script's `rk` calls.

On this machine every Python start costs the run a tenth of a second of CPU (the interpreter and
the agent's imports), and the script makes five of them before its status is final. Started
once (`rk` in the script, as a coprocess), this process answers each call as a process of its
own would: the same arguments, the shell's environment of that moment, the same output into the
run's log, the same exit status. The script keeps every step, its order, its failure and its
cause; when this process has gone (a signal, a power-off), `rk` starts the agent itself.

A request, NUL-separated: its number, the count of arguments, the arguments, the environment's
NAME=value entries, an empty entry. The answer, on `reply`: "<number> <exit status>\\n".
Standard library only; shipped in the script's payload to embedded VMs alone (vm_payload.py).
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable, Iterator

Request = tuple[str, list[str], dict[str, str]]


def requests(fd: int, parent: int, idle: float = 1.0) -> Iterator[Request]:
    """The requests read from `fd` until it closes or the shell that started us is gone (then
    nothing will close it: a child it left may hold its end)."""
    buf, tokens = b"", []
    while True:
        ready, _, _ = select.select([fd], [], [], idle)
        if not ready:
            if os.getppid() != parent:
                return
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        *done, buf = (buf + chunk).split(b"\0")
        tokens.extend(os.fsdecode(t) for t in done)
        while (request := _take(tokens)) is not None:
            yield request


def _take(tokens: list[str]) -> Request | None:
    """The first whole request in `tokens` (removed from it), or None while one is incomplete."""
    if len(tokens) < 2:
        return None
    n = int(tokens[1])
    try:
        end = tokens.index("", 2 + n)
    except ValueError:
        return None
    number, args, entries = tokens[0], tokens[2:2 + n], tokens[2 + n:end]
    del tokens[:end + 1]
    return number, args, dict(e.split("=", 1) for e in entries if "=" in e)


def serve(answer: Callable[[list[str], dict[str, str]], int], reply: int) -> int:
    parent = os.getppid()
    for number, args, environ in requests(sys.stdin.fileno(), parent):
        try:
            rc = answer(args, environ)
        except SystemExit as e:  # what a process of its own would have exited with
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            rc = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.write(reply, f"{number} {rc}\n".encode())
        except BrokenPipeError:  # the script has gone: no one is left to ask
            return 0
    return 0


# --- the script's end (startup.py renders it for an agent that serves) ----------------------
RK_BODY = """\
  if [[ -n "${{RK_AGENT_PID:-}}" && "$BASHPID" == "$$" ]] && rk_ask "$@"; then
    return "$RK_ASKED"
  fi
  {direct}"""

RK_ASK = r"""RK_ASKS=0
RK_ASKED=""
# One call asked of the agent's process (researchkit_py/vm_serve.py): its number, its arguments
# and this shell's environment, NUL-separated; the answer: the number and the call's exit status.
# Fails, so that rk starts the agent itself, when the process has gone.
rk_ask() {
  local to=${RK_AGENT[1]:-} from=${RK_AGENT[0]:-} name number reply sent=1
  local -a request
  [[ -n "$to" && -n "$from" ]] || return 1
  RK_ASKS=$((RK_ASKS + 1))
  request=("$RK_ASKS" "$#" "$@")
  for name in $(compgen -e); do request+=("$name=${!name}"); done
  # here, not in a subshell (bash closes a coprocess's descriptors there); SIGPIPE ignored for
  # the write alone, so that a process that has gone fails it instead of ending this shell
  trap '' PIPE
  { printf '%s\0' "${request[@]}" "" >&"$to"; } 2>/dev/null || sent=0
  trap - PIPE
  [[ "$sent" == 1 ]] || return 1
  while read -r -u "$from" number reply; do
    if [[ "$number" == "$RK_ASKS" ]]; then
      RK_ASKED=$reply
      return 0
    fi
  done
  return 1
}
# The end of the agent's process, the script's last act: its input closed, it exits, as each
# call's own process did; the supervisor's power-off then finds nothing of it half done.
rk_agent_done() {
  local to=${RK_AGENT[1]:-} pid=${RK_AGENT_PID:-}
  if [[ -n "$to" ]]; then exec {to}>&-; fi
  if [[ -n "$pid" ]]; then wait "$pid" 2>/dev/null; fi
}
"""

SERVE_LINES = """\
if compgen -e >/dev/null; then  # one agent process: its output into the log, its answers on fd 4
  coproc RK_AGENT {{ cd "$RK_ROOT/agent" && exec {python} serve 4 4>&1 >&2; }}
fi
"""
