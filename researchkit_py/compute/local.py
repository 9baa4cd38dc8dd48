"""The embedded provider: the identical startup script, run as a detached session on this machine.

An "instance" is a record file plus a supervisor process. The supervisor starts the
script in its own session, and at the deadline kills every process of that session
(layer 2); the script's self-delete removes the record (layer 1); the reaper removes
records whose processes are gone or past their deadline (layer 3).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..runs import iso
from .base import Instance, InstanceRequest, Provider


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.root = settings.state_home() / "local"
        self.records = self.root / "instances"
        self.vms = self.root / "vms"

    def default_store_url(self) -> str:
        return f"file://{self.root / 'bucket'}"

    def deadline_lines(self, max_seconds: int) -> str:
        return f"# deadline: the local supervisor ends this session after {int(max_seconds)} s"

    def self_delete_lines(self) -> str:
        return '(cd "$RK_ROOT/agent" && python3 -m researchkit_py.vm_agent self-delete local) || rm -f "${RK_LOCAL_INSTANCE:-}"'

    def _record(self, name: str) -> Path:
        return self.records / f"{name}.json"

    def create(self, req: InstanceRequest) -> Instance:
        existing = self.get(req.name)
        if existing is not None:
            return existing  # idempotent: the same run id never starts twice
        self.records.mkdir(parents=True, exist_ok=True)
        vm_dir = self.vms / req.name
        vm_dir.mkdir(parents=True, exist_ok=True)
        script = vm_dir / "startup.sh"
        script.write_text(req.startup_script)
        record = {"name": req.name, "labels": req.labels, "created_at": iso(time.time()),
                  "deadline": time.time() + req.max_seconds, "vm_dir": str(vm_dir), "state": "PROVISIONING"}
        _write_json(self._record(req.name), record)
        with open(vm_dir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "researchkit_py.compute.local", str(self._record(req.name))],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=vm_dir,
                env={**os.environ, "PYTHONPATH": _package_parent()},  # cwd: never a project's own copy
            )
        # the supervisor leads a new session that the script shares: killing that session is power-off
        record.update(supervisor_pid=proc.pid, supervisor_start=_start_time(proc.pid), session=proc.pid,
                      state="RUNNING")
        _write_json(self._record(req.name), record)
        return Instance(req.name, "RUNNING", req.labels)

    def get(self, name: str) -> Instance | None:
        rec = _read_json(self._record(name))
        return _instance(rec) if rec else None

    def list(self) -> list[Instance]:
        if not self.records.is_dir():
            return []
        out = []
        for p in sorted(self.records.glob("*.json")):
            rec = _read_json(p)
            if rec:
                out.append(_instance(rec))
        return out

    def delete(self, name: str) -> None:
        rec = _read_json(self._record(name))
        if rec is None:
            return
        session, marker = rec.get("session"), str(self._record(name))
        if session and session_pids(session, marker):
            # power off: the script's TERM trap may still report; then nothing survives
            kill_session(session, signal.SIGTERM, marker)
            _wait_session_gone(session, marker, float(os.environ.get("RK_LOCAL_GRACE", "5")))
            kill_session(session, signal.SIGKILL, marker)
        pid = rec.get("supervisor_pid")
        if pid and _alive(pid, rec.get("supervisor_start")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._record(name).unlink(missing_ok=True)
        _remove_tree(Path(rec.get("vm_dir", "")))


def _instance(rec: dict) -> Instance:
    alive = _alive(rec.get("supervisor_pid"), rec.get("supervisor_start"))
    state = rec.get("state", "RUNNING") if alive or rec.get("state") == "PROVISIONING" else "TERMINATED"
    return Instance(rec["name"], state, rec.get("labels", {}))


def _package_parent() -> str:
    return str(Path(__file__).resolve().parents[2])


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _start_time(pid: int) -> str | None:
    """The process start time from /proc, so a recycled pid is not taken for ours."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None and _start_time(pid) not in (None, start):
        return False
    stat = _proc_stat(pid)
    return not (stat and stat[0] == "Z")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def session_pids(sid: int, marker: str | None = None) -> list[int]:
    """The live processes of a local VM: those of its session that carry its marker in their
    environment (so a recycled session id never makes us touch someone else's processes)."""
    if not Path("/proc").is_dir():
        return [sid]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if not stat or int(stat[3]) != sid or stat[0] == "Z":
            continue
        if marker is None or _has_marker(int(entry), marker):
            pids.append(int(entry))
    return pids


def _has_marker(pid: int, marker: str) -> bool:
    try:
        return f"RK_LOCAL_INSTANCE={marker}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def kill_session(sid: int, sig: int, marker: str | None = None, spare: int | None = None) -> None:
    if not Path("/proc").is_dir():
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            pass
        return
    for pid in session_pids(sid, marker):
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_session_gone(sid: int, marker: str, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end and session_pids(sid, marker):
        time.sleep(0.05)


def _remove_tree(path: Path) -> None:
    import shutil

    if path.name and path.is_dir() and not os.environ.get("RK_KEEP_VM_DIR"):
        shutil.rmtree(path, ignore_errors=True)


def supervise(record_path: Path) -> int:
    """The local 'hypervisor': boot the script, enforce the deadline, power off, clean up."""
    rec = _read_json(record_path)
    if rec is None:
        return 0
    vm_dir = Path(rec["vm_dir"])
    env = {**os.environ, "RK_VM_ROOT": str(vm_dir), "RK_LOCAL_INSTANCE": str(record_path)}
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
    _remove_tree(vm_dir)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
