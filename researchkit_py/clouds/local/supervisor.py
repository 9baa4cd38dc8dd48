"""The embedded provider's "hypervisor": one process per instance that boots the startup
script in its own session, powers it off at the deadline (layer 2) and cleans up.

  python -m researchkit_py.clouds.local.supervisor RECORD.json

or forked from the client that creates the instance (fork below): the same process, without a
Python start on the way to the run's first step.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from ...settings import Settings
from .processes import kill_session, read_json, remove_vm_dir


def supervise(record_path: Path, settings: Settings) -> int:
    rec = read_json(record_path)
    if rec is None:
        return 0
    vm_dir = Path(rec["vm_dir"])
    env = {**settings.environ, "RK_VM_ROOT": str(vm_dir), "RK_LOCAL_INSTANCE": str(record_path)}
    env.pop("PYTHONPATH", None)
    with open(vm_dir / "console.log", "ab") as console:
        proc = subprocess.Popen(["bash", str(vm_dir / "startup.sh")], cwd=vm_dir, env=env,
                                stdin=subprocess.DEVNULL, stdout=console, stderr=console)
    sid, me = os.getsid(0), os.getpid()
    print(f"supervisor: booted {shlex.quote(rec['name'])} (pid {proc.pid}, session {sid})", flush=True)
    try:
        proc.wait(timeout=max(0.0, rec["deadline"] - time.time()))
        print(f"supervisor: script exited {proc.returncode}", flush=True)
    except subprocess.TimeoutExpired:
        print("supervisor: deadline reached; powering off", flush=True)
        kill_session(sid, signal.SIGKILL, str(record_path), spare=me)
        proc.wait()
    kill_session(sid, signal.SIGKILL, str(record_path), spare=me)  # nothing of a finished VM keeps running
    record_path.unlink(missing_ok=True)
    remove_vm_dir(vm_dir, settings.flag("RK_KEEP_VM_DIR"))
    return 0


def fork(record_path: Path, vm_dir: Path, environ: dict[str, str]) -> int | None:
    """The supervisor as a child of this process, leading a session of its own, as
    `python -m …supervisor` in `environ` would be; None where a fork is not safe (another thread
    may hold a lock the child would need: the caller starts a Python instead). The child never
    returns: it leaves with os._exit, so nothing of its parent's (atexit, buffers) runs twice."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)  # the client's handlers are not a supervisor's
        log = os.open(vm_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)  # the client's files and locks
        sys.stdin, sys.stdout, sys.stderr = (open(fd, mode, closefd=False) for fd, mode in ((0, "r"), (1, "w"), (2, "w")))
        os.chdir(vm_dir)
        code = supervise(record_path, Settings(environ=environ, read_file=False))
    except BaseException:  # noqa: BLE001 - said in the supervisor's log; nothing else may see it
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), Settings(read_file=False)))
