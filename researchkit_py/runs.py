"""Run records in the bucket: run ids, manifest.json, status.json, heartbeat.

The bucket is the control plane: everything a client needs to know about a run, during
or long after it, is under runs/<run-id>/.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

PHASES = ("BOOT", "SETUP", "RUN", "UPLOAD", "DONE", "FAILED")
FINAL = ("DONE", "FAILED")
CAUSES = ("exit", "timeout", "lost", "boot_error", "upload_error", "terminated")

# Exit codes of the client when the remote command's own code is not the answer.
EXIT_TIMEOUT = 124
EXIT_INFRA = 125

RUN_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def now() -> float:
    return time.time()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def slug(text: str, limit: int = 24) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s if s and s[0].isalpha() else f"run-{s}".strip("-")


def new_run_id(label: str = "run") -> str:
    """`<label>-YYYYMMDD-HHMMSS-<8 hex>`: sorts by time, never collides in practice,
    and is a valid GCE instance name / EC2 tag value once prefixed with `rk-`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    import secrets

    return f"{slug(label)}-{stamp}-{secrets.token_hex(4)}"


def check_run_id(run_id: str) -> str:
    from .errors import UsageError

    if not RUN_ID_RE.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id; `cloud-run ls` lists them")
    return run_id


def instance_name(run_id: str) -> str:
    return f"rk-{run_id}"[:63].rstrip("-")


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


@dataclass
class RunManifest:
    run_id: str
    provider: str
    instance: str
    command: str
    bundle: str  # key of the code bundle
    created_at: str
    expires_at: str
    max_hours: float
    heartbeat_seconds: int
    zone: str = ""
    machine_type: str = ""
    spec: str = ""
    experiment: str = ""
    results_subdir: str = "results"
    data_dirs: list[str] = field(default_factory=list)
    env_keys: list[str] = field(default_factory=list)  # names only: values stay in the script
    worst_case_cost_usd: float | None = None
    detached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def effective_status(manifest: dict, status: dict | None, heartbeat: float | None,
                     instance_alive: bool, at: float | None = None) -> dict:
    """What a run's state is, from what the bucket and the provider say.

    A final status.json is the truth. Otherwise, while the instance lives, the VM's last
    phase is. With no live instance and a stale (or absent) heartbeat the run is LOST —
    or FAILED by timeout when its deadline has passed: the cloud-enforced deadline ended it.
    """
    at = now() if at is None else at
    s = dict(status or {"phase": "PENDING"})
    if s.get("phase") in FINAL:
        return s
    if instance_alive:
        return s
    stale_after = max(3 * int(manifest.get("heartbeat_seconds", 30)), 3)
    last = heartbeat or parse_iso(manifest["created_at"])
    if at - last < stale_after:
        return s  # gone only a moment ago: the VM may still be writing its final status
    expired = at >= parse_iso(manifest["expires_at"])
    s.update(phase="FAILED", cause="timeout" if expired else "lost", exit_code=None,
             message="the instance is gone and stopped reporting" + (" after its deadline" if expired else ""))
    return s


def client_exit_code(status: dict) -> int:
    """The exit code `cloud-run run` reports: the remote command's own where it ran to the end."""
    if status.get("phase") == "DONE":
        return int(status.get("exit_code") or 0)
    cause = status.get("cause")
    if cause == "exit" and status.get("exit_code") not in (None, 0):
        return int(status["exit_code"])
    if cause == "timeout":
        return EXIT_TIMEOUT
    return EXIT_INFRA
