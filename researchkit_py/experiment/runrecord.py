"""The record of the run RUN made, and READ's check against it: READ judges only the numbers
of the run RUN just made (docs/decisions.md, "READ judges the run RUN made").

results/<id>/.run-record.json holds the run's id (the cloud run's, or a local one made for
it), its state and cause, and the sha256 of the metrics.json it produced. RUN's begin writes
it STARTED (so an interrupted RUN leaves a record that says so) and removes the previous
run's .cloud-run-id; RUN's end writes what the run came to; sync_results refreshes it after
each pull. For a cloud run, the state and the checksum come from the pull's own record
(.cloud-run-state.json: the run's status when pulled, and each file's sha256 as its results
manifest lists it), never from whatever happens to lie in the directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import protocol
from ..repull import read_pull_state
from ..storage.paths import write_json_atomic

RECORD = ".run-record.json"
CLOUD_RUN_ID = ".cloud-run-id"
METRICS = "metrics.json"
DONE = protocol.DONE


def load(results: Path) -> dict | None:
    try:
        record = json.loads((Path(results) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("state") else None


def _save(results: Path, record: dict) -> dict:
    write_json_atomic(Path(results) / RECORD, record, indent=2)
    return record


def start(results: Path, spec_id: str, target: str, cloud: bool) -> None:
    """RUN begins: a new record, and no stale run id for sync_results to pull."""
    (Path(results) / CLOUD_RUN_ID).unlink(missing_ok=True)
    _save(results, {"spec_id": spec_id, "target": target, "cloud": cloud,
                    "run_id": "" if cloud else protocol.new_run_id(f"local-{spec_id}"),
                    "state": "STARTED", "cause": "", "agent_exit": None, "metrics_sha256": None,
                    "started_at": protocol.iso(time.time()), "started_ns": time.time_ns()})


def finish(results: Path, agent_exit: int, aborted: str = "") -> dict:
    """RUN ends: what the run came to. `aborted`: why RUN was stopped, if it was."""
    record = load(results) or {"state": "STARTED", "cloud": False, "run_id": "", "started_ns": 0}
    record.update(agent_exit=agent_exit, ended_at=protocol.iso(time.time()))
    if record["cloud"]:
        _cloud_state(results, record)
    else:
        record.update(state=DONE, cause="", metrics_sha256=_produced(results, record["started_ns"]))
        if not record["metrics_sha256"] and _sha(results / METRICS):
            record["cause"] = f"the {METRICS} in {results} predates this RUN"
    if aborted:
        record.update(state="ABORTED", cause=aborted)
    elif agent_exit != 0 and record["state"] == DONE:
        record.update(state="FAILED", cause=f"the RUN agent exited {agent_exit}")
    return _save(results, record)


def refresh(results: Path) -> dict | None:
    """After sync_results pulled: the cloud run's state and checksum as that pull saw them."""
    record = load(results)
    if record and record.get("cloud") and record.get("state") != "ABORTED" and not record.get("agent_exit"):
        _cloud_state(results, record)
        record["synced_at"] = protocol.iso(time.time())
        _save(results, record)
    return record


def _cloud_state(results: Path, record: dict) -> None:
    try:
        run_id = (results / CLOUD_RUN_ID).read_text().strip()
    except OSError:
        record.update(run_id="", state="FAILED", metrics_sha256=None,
                      cause=f"no cloud run was made (no {results / CLOUD_RUN_ID}); RUN must go through cloud-run")
        return
    pulled = read_pull_state(results, run_id)
    status = pulled.get("status") or {}
    entry = pulled.get("files", {}).get(METRICS)
    record.update(run_id=run_id, metrics_sha256=entry[2] if entry else None)
    if not pulled:
        record.update(state="UNKNOWN", cause=f"its results were not pulled: cloud-run pull {run_id} --output-dir {results}")
    elif status.get("phase") not in protocol.FINAL:
        record.update(state="RUNNING", cause=f"it was still {status.get('phase') or 'starting'} when last pulled; "
                                             f"pull it again once it ends: cloud-run pull {run_id} --output-dir {results}")
    else:
        failed = status["phase"] != DONE
        record.update(state=status["phase"], cause=(status.get("message") or status.get("cause") or "") if failed else "")
        if status["phase"] == DONE and not pulled.get("complete"):
            record.update(state="FAILED", cause="it uploaded no results manifest: its results are incomplete")


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _produced(results: Path, since_ns: int) -> str | None:
    """The sha256 of metrics.json if this RUN wrote it (it changed after RUN began)."""
    path = results / METRICS
    try:
        fresh = path.stat().st_mtime_ns >= since_ns
    except OSError:
        return None
    return _sha(path) if fresh else None


def problem(results: Path) -> str | None:
    """Why metrics.json in `results` must not be judged (None when it is the run's own)."""
    results = Path(results)
    record = load(results)
    if record is None:
        return f"there is no record of a RUN for {results} ({RECORD}); run the experiment with experiment.sh first"
    run = record.get("run_id") or "(no run id)"
    if record["state"] == "STARTED":
        return f"RUN {run}, started {record.get('started_at')}, never finished (interrupted, or still running)"
    if record["state"] != DONE:
        return f"RUN {run} {record['state']}: {record.get('cause') or 'no cause recorded'}"
    if not record.get("metrics_sha256"):
        return f"run {run} produced no {METRICS}" + (f" ({record['cause']})" if record.get("cause") else "")
    now = _sha(results / METRICS)
    if now is None:
        return f"the {METRICS} run {run} produced is missing from {results}"
    if now != record["metrics_sha256"]:
        return (f"{results / METRICS} is not what run {run} produced (sha256 {record['metrics_sha256'][:12]}… recorded, "
                f"{now[:12]}… now): it was changed after RUN; re-run the experiment, or restore the file")
    return None


def _begun(record: dict) -> str:
    return f"the RUN begun {record.get('started_at')}"


def judges_current_run(results: Path, analysis: str) -> bool:
    """Does this analysis judge the run RUN last made (it carries that RUN's provenance)?"""
    record = load(results)
    return record is None or _begun(record) in analysis


def provenance(results: Path) -> str:
    """The line an analysis carries: which RUN, which run, which metrics."""
    record = load(results)
    if record is None:
        return "Judged: no RUN record"
    sha = record.get("metrics_sha256")
    return (f"Judged: {_begun(record)}, run {record.get('run_id') or '(none)'} ({record['state']}); "
            f"{METRICS} sha256 {sha or '(none)'}")


def read_brief(results: Path) -> str:
    """What the READ prompt says about the run: judge it, or say INCONCLUSIVE and why."""
    why = problem(results)
    if why:
        return (f"The RUN record ({results}/{RECORD}) says: {why}.\n"
                f"So the verdict MUST be `## Verdict: INCONCLUSIVE`: state this cause in the analysis, and do not "
                f"judge the numbers in {results}/{METRICS} (they are not the metrics of a run that completed). "
                f"Explain what failed if the logs show it. Any other verdict is refused.")
    return (f"The RUN record ({results}/{RECORD}) says: {provenance(results)}.\n"
            f"Judge exactly that {METRICS}, and name the run id and its sha256 in the analysis.")


def check_verdict(results: Path, verdict: str) -> str | None:
    """After READ: why its verdict cannot stand (None when it can). A verdict other than
    INCONCLUSIVE needs the metrics of the run RUN made, unchanged."""
    why = problem(results)
    return f"READ wrote {verdict}, but {why}" if why and verdict != "INCONCLUSIVE" else None
