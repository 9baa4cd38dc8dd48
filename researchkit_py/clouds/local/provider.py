"""The embedded provider: the identical startup script, run as a detached session on this machine.

An "instance" is a record file plus a supervisor process (supervisor.py). The supervisor
starts the script in its own session, and at the deadline kills every process of that
session (layer 2); the script's self-delete removes the record (layer 1); the reaper
removes records whose processes are gone or past their deadline (layer 3).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ...protocol import iso
from ...storage.paths import write_json_atomic
from ..base import Instance, InstanceRequest, Provider
from . import supervisor
from .processes import alive, kill_session, read_json, remove_vm_dir, session_pids, start_time, wait_session_gone


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.root = settings.state_home() / "local"
        self.records = self.root / "instances"
        self.vms = self.root / "vms"

    def default_store_url(self) -> str:
        return f"file://{self.root / 'bucket'}"

    def env_cache(self) -> str:
        """Where the VM's requirements.txt environments are kept and reused (vm_setup.reuse_env)."""
        return self.settings.text("RK_ENV_CACHE") or str(self.settings.cache_home() / "envs")

    def deadline_lines(self, max_seconds: int) -> str:
        return f"# deadline: the local supervisor ends this session after {int(max_seconds)} s"

    def self_delete_lines(self) -> str:
        # what `rk self-delete` does here, without a Python start on the way to the client's pull
        return 'rm -f "${RK_LOCAL_INSTANCE:-}"'

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
        write_json_atomic(self._record(req.name), record)
        # The supervisor reads no env file (it runs in its VM directory): the one setting it needs
        # travels resolved, in its environment.
        env = {**self.settings.environ, "PYTHONPATH": _package_parent(),
               "RK_KEEP_VM_DIR": "1" if self.settings.flag("RK_KEEP_VM_DIR") else "", "RK_ENV_CACHE": self.env_cache()}
        pid = supervisor.fork(self._record(req.name), vm_dir, env)
        if pid is None:
            with open(vm_dir / "supervisor.log", "ab") as log:
                pid = subprocess.Popen(  # cwd: never a project's own copy of the package
                    [sys.executable, "-m", "researchkit_py.clouds.local.supervisor", str(self._record(req.name))],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=vm_dir, env=env,
                ).pid
        # the supervisor leads a new session that the script shares: killing that session is power-off
        record.update(supervisor_pid=pid, supervisor_start=start_time(pid), session=pid, state="RUNNING")
        write_json_atomic(self._record(req.name), record)
        return Instance(req.name, "RUNNING", req.labels)

    def get(self, name: str) -> Instance | None:
        rec = read_json(self._record(name))
        return _instance(rec) if rec else None

    def list(self) -> list[Instance]:
        if not self.records.is_dir():
            return []
        out = []
        for p in sorted(self.records.glob("*.json")):
            rec = read_json(p)
            if rec:
                out.append(_instance(rec))
        return out

    def delete(self, name: str) -> None:
        rec = read_json(self._record(name))
        if rec is None:
            return
        session, marker = rec.get("session"), str(self._record(name))
        if session and session_pids(session, marker):
            # power off: the script's TERM trap may still report; then nothing survives
            kill_session(session, signal.SIGTERM, marker)
            wait_session_gone(session, marker, self.settings.number("RK_LOCAL_GRACE"))
            kill_session(session, signal.SIGKILL, marker)
        pid = rec.get("supervisor_pid")
        if pid and alive(pid, rec.get("supervisor_start")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._record(name).unlink(missing_ok=True)
        remove_vm_dir(Path(rec.get("vm_dir", "")), self.settings.flag("RK_KEEP_VM_DIR"))


def _instance(rec: dict) -> Instance:
    running = alive(rec.get("supervisor_pid"), rec.get("supervisor_start"))
    state = rec.get("state", "RUNNING") if running or rec.get("state") == "PROVISIONING" else "TERMINATED"
    return Instance(rec["name"], state, rec.get("labels", {}))


def _package_parent() -> str:
    return str(Path(__file__).resolve().parents[3])
