"""Pulling a run's results into a local directory: verified, incremental, never outside it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .. import protocol
from ..errors import KitError, say
from ..storage import join_key
from ..storage.paths import write_json_atomic
from ..storage.transfer import TransferStats, pull_tree
from .context import Context
from .monitor import read_log, read_manifest

PULL_STATE = ".cloud-run-state.json"


def check_output_dir(output_dir: Path) -> Path:
    output_dir = Path(output_dir)
    parent = output_dir.resolve().parent
    if not parent.is_dir():
        raise KitError(f"--output-dir {output_dir}: its parent {parent} does not exist; create it first")
    if output_dir.exists() and not output_dir.is_dir():
        raise KitError(f"--output-dir {output_dir} exists and is not a directory; choose another path")
    probe = output_dir if output_dir.is_dir() else parent
    if not os.access(probe, os.W_OK):
        raise KitError(f"--output-dir {output_dir}: {probe} is not writable; choose a directory you can write")
    return output_dir


def pull(ctx: Context, run_id: str, output_dir: Path, *, verify: bool = False) -> tuple[TransferStats, bool]:
    """Fetch a run's results, verified against results.manifest.json; (stats, complete).

    `.cloud-run-state.json` in output_dir remembers what the last pull installed (size,
    mtime, sha256 per file). Unchanged local files are then not hashed again, and pulling a
    finished run whose results are all still in place needs no request at all: once its
    status is final nothing writes to its results or log again. `verify` ignores the state.
    """
    output_dir = check_output_dir(output_dir)
    state = {} if verify else _read_pull_state(output_dir, run_id)
    if state.get("final") and all(_stat(output_dir, p) == v[:2] for p, v in state["files"].items()):
        return TransferStats(skipped=len(state["files"])), True
    read_manifest(ctx, run_id)
    prefix = protocol.run_prefix(run_id)
    # the status before the rest: final then means final
    status = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.STATUS)) or {}
    results = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.RESULTS_MANIFEST))
    output_dir.mkdir(parents=True, exist_ok=True)
    packs = [join_key(prefix, p) for p in results.get("packs", [])] if results else []
    stats = pull_tree(ctx.store, protocol.run_key(run_id, protocol.RESULTS), output_dir,
                      expected=results["files"] if results else None, packs=packs, known=state.get("files", {}),
                      label=f"pull {run_id}")
    (output_dir / ".cloud-run-id").write_text(run_id + "\n")
    log = read_log(ctx, run_id)
    if log:
        (output_dir / ".cloud-run.log").write_bytes(log)
    if status:  # beside the log: READ reports what the run ran on (its GPU facts)
        write_json_atomic(output_dir / protocol.PULLED_STATUS, status)
    for rel in stats.kept:
        say(f"cloud-run: your local {output_dir / rel} differed from the run's; kept it as {rel}.orig")
    if results:
        final = status.get("phase") in protocol.FINAL
        files = {p: [*_stat(output_dir, p), sha] for p, sha in stats.installed.items()}
        write_json_atomic(output_dir / PULL_STATE, {"run_id": run_id, "final": final, "files": files})
    return stats, results is not None


def _stat(root: Path, rel: str) -> list[int] | None:
    try:
        st = os.lstat(os.path.join(root, rel))  # not pathlib: this runs for every file of every pull
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else None


def _read_pull_state(output_dir: Path, run_id: str) -> dict:
    try:
        state = json.loads((output_dir / PULL_STATE).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(state, dict) and state.get("run_id") == run_id and isinstance(state.get("files"), dict)
    return state if ok else {}
