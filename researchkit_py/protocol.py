"""The run protocol: what the client and the VM agree on, written once.

The bucket is the control plane: everything a client needs to know about a run, during or
long after it, is under `runs/<run-id>/`. This module names every key of that layout, the
records kept there (manifest, status), the stages a run goes through, the causes of a
failure, the deadlines, and what a client reads from them. The client and the VM agent
both use it (it travels to the VM with the agent): nothing else spells a key.

Standard library only.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .errors import UsageError

# --- stages, phases, causes -------------------------------------------------------------
# A run's status.json holds its phase: the stage the VM last reported while it works, then
# a final phase with a cause.
BOOT, SETUP, RUN, UPLOAD = "BOOT", "SETUP", "RUN", "UPLOAD"
DONE, FAILED = "DONE", "FAILED"
CANCELLED = "CANCELLED"  # stopped on request: its caller was interrupted (attached), or the VM was asked to stop
STAGES = (BOOT, SETUP, RUN, UPLOAD)
FINAL = (DONE, FAILED, CANCELLED)
PENDING = "PENDING"  # no status written yet

EXIT, TIMEOUT, LOST = "exit", "timeout", "lost"
BOOT_ERROR, UPLOAD_ERROR, TERMINATED = "boot_error", "upload_error", "terminated"
CANCELLED_CAUSE = "cancelled"  # the run's CANCEL request: the VM stops, uploads what it has, goes
GPU_UNAVAILABLE = "gpu_unavailable"  # the run asked for a GPU the VM could not use: the command never ran
# A run whose script failed before its end, by the stage it was in, unless the cause was named:
# by a signal to the script (its TERM trap), or by the failed setup step itself.
STAGE_CAUSE = {BOOT: BOOT_ERROR, SETUP: BOOT_ERROR, UPLOAD: UPLOAD_ERROR}
STOPPED = (TERMINATED, CANCELLED_CAUSE)
SETUP_CAUSES = (GPU_UNAVAILABLE,)
MESSAGES = {EXIT: "command exited {rc}", TIMEOUT: "command ran past its deadline",
            BOOT_ERROR: "setup failed during {stage}", UPLOAD_ERROR: "results upload failed",
            TERMINATED: "stopped during {stage}", CANCELLED_CAUSE: "cancelled during {stage}",
            GPU_UNAVAILABLE: "no usable GPU: the command did not run"}

# Exit codes of the client when the remote command's own code is not the answer.
EXIT_TIMEOUT = 124
EXIT_INFRA = 125
EXIT_CANCELLED = 130  # as a Ctrl-C'd command's; an attached client exits 128 + the signal it got

# --- the bucket layout ------------------------------------------------------------------
RUNS = "runs"
MANIFEST, STATUS, HEARTBEAT = "manifest.json", "status.json", "heartbeat"
# The client's request that the run stop (an attached caller interrupted): the VM's heartbeat
# looks for it; its presence also turns a signal's `terminated` into `cancelled`.
CANCEL = "cancel.json"
LOG = "logs/run.log"
# A log shorter than its bucket can append to (S3: its smallest part, Store.log_chunk_limit)
# grows as chunks beside it, each named by the offset in the log it starts at: the log is LOG's
# bytes, then the chunks from where they end (vm_log.py writes them, lifecycle/monitor.py reads).
LOG_CHUNKS = LOG + ".chunks"
RESULTS, RESULTS_MANIFEST, PACKS, DATA = "results", "results.manifest.json", "packs", "data"
# On the VM, what its GPU check (gpu_check.py) found, for every status after it.
GPU_FACTS = "gpu.json"
# Beside pulled results: the run's status as the pull found it (READ prints its GPU facts).


def run_prefix(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


def run_key(run_id: str, name: str) -> str:
    """The key of one of a run's objects: run_key(id, STATUS), run_key(id, LOG), …"""
    return f"{RUNS}/{run_id}/{name}"


def log_chunk_key(run_id: str, start: int) -> str:
    """The chunk of a run's log that starts `start` bytes into it (zero-padded: they list in order)."""
    return run_key(run_id, f"{LOG_CHUNKS}/{start:012d}")


def bundle_key(sha256: str) -> str:
    return f"code/{sha256}.tar.gz"


# --- run ids ------------------------------------------------------------------------------
RUN_ID_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # fullmatch: `$` would let a trailing newline in


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
    return f"{slug(label)}-{stamp}-{secrets.token_hex(4)}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.fullmatch(run_id):
        raise UsageError(f"{run_id!r} is not a run id; `cloud-run ls` lists them")
    return run_id


def instance_name(run_id: str) -> str:
    return f"rk-{run_id}"[:63].rstrip("-")


# --- deadlines ------------------------------------------------------------------------------
def deadlines(max_hours: float) -> tuple[int, int]:
    """(hard, soft) seconds: the soft deadline leaves the VM time to upload before the hard one."""
    if max_hours <= 0:
        raise UsageError("--max-hours must be positive")
    hard = max(1, math.ceil(max_hours * 3600))
    grace = min(300, max(10, hard // 20))  # the trap's uploads and self-delete need a few seconds
    return hard, max(1, hard - grace)


# --- records ---------------------------------------------------------------------------------
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
    gpu: str = ""  # the GPU model asked for ("" for none)
    gpu_count: int = 0
    spec: str = ""
    experiment: str = ""
    results_subdir: str = "results"
    data_dirs: list[str] = field(default_factory=list)
    env_keys: list[str] = field(default_factory=list)  # names only: values stay in the script
    worst_case_cost_usd: float | None = None
    detached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def status_record(run_id: str, phase: str, **fields) -> dict:
    return {"run_id": run_id, "phase": phase, "updated_at": iso(now()), **fields}


def cancelled_status(run_id: str, message: str) -> dict:
    """The status the client writes for a run it stopped itself (its VM never reported its end)."""
    return status_record(run_id, CANCELLED, cause=CANCELLED_CAUSE, exit_code=None, message=message)


def final_status(stage: str, cmd_rc: int | None, cause: str, step: str = "") -> dict:
    """The fields of the status the VM's EXIT trap writes: the command's own result once the
    script reached its end; else a signal's cause (STOPPED), else the failing stage's (with
    `step`, what the script was doing then and why it failed)."""
    if stage == DONE:  # the script reached its end: the command's own result decides
        cause = cause or EXIT
        phase = DONE if cause == EXIT and cmd_rc == 0 else FAILED
    else:
        phase = FAILED
        cause = cause if cause in STOPPED + SETUP_CAUSES else STAGE_CAUSE.get(stage) or cause or TERMINATED
    if cause == CANCELLED_CAUSE:  # asked to stop: whatever the stage, that is the run's end
        phase = CANCELLED
    message = MESSAGES.get(cause, cause).format(rc=cmd_rc, stage=stage) + (f": {step}" if step else "")
    return {"phase": phase, "exit_code": cmd_rc, "cause": cause, "stage": stage, "step": step, "message": message}


def effective_status(manifest: dict, status: dict | None, heartbeat: float | None,
                     instance_alive: bool, at: float | None = None) -> dict:
    """What a run's state is, from what the bucket and the provider say.

    A final status.json is the truth. Otherwise, while the instance lives, the VM's last
    phase is. With no live instance and a stale (or absent) heartbeat the run is LOST —
    or FAILED by timeout when its deadline has passed: the cloud-enforced deadline ended it.
    """
    at = now() if at is None else at
    s = dict(status or {"phase": PENDING})
    if s.get("phase") in FINAL:
        return s
    if instance_alive:
        return s
    stale_after = max(3 * int(manifest.get("heartbeat_seconds", 30)), 3)
    last = heartbeat or parse_iso(manifest["created_at"])
    if at - last < stale_after:
        return s  # gone only a moment ago: the VM may still be writing its final status
    expired = at >= parse_iso(manifest["expires_at"])
    s.update(phase=FAILED, cause=TIMEOUT if expired else LOST, exit_code=None,
             message="the instance is gone and stopped reporting" + (" after its deadline" if expired else ""))
    return s


def client_exit_code(status: dict) -> int:
    """The exit code `cloud-run run` reports: the remote command's own where it ran to the end."""
    if status.get("phase") == DONE:
        return int(status.get("exit_code") or 0)
    cause = status.get("cause")
    if cause == EXIT and status.get("exit_code") not in (None, 0):
        return int(status["exit_code"])
    if cause == TIMEOUT:
        return EXIT_TIMEOUT
    if status.get("phase") == CANCELLED:
        return EXIT_CANCELLED
    return EXIT_INFRA
