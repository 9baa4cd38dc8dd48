"""The embedded provider's "hypervisor": one process per instance that boots the startup
script in its own session, powers it off at the deadline (layer 2) and cleans up.

  python -m researchkit_py.clouds.local.supervisor RECORD.json
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
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


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), Settings(read_file=False)))
