"""Pulling a run's results into a local directory: verified, incremental, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

from .. import protocol
from ..errors import KitError, UsageError, say
from ..repull import PULL_STATE, all_in_place, read_pull_state
from ..repull import file_stat as _stat
from ..storage import join_key
from ..storage.landing import check_landing, local_write_error
from ..storage.paths import write_json_atomic
from ..storage.transfer import TransferStats, pull_tree
from .context import Context
from .monitor import read_log, read_manifest

__all__ = ["PULL_STATE", "check_output_dir", "pull", "read_pull_state"]


def check_output_dir(output_dir: Path, *, make_parents: bool = False) -> Path:
    """The directory results go to (resolved), refused in one line if it cannot be one. Its missing
    parents are an error, unless `make_parents` (a default path, not the user's): pull()
    then creates them."""
    if "\x00" in str(output_dir):
        raise UsageError(f"--output-dir {str(output_dir)!r} contains a NUL byte; choose another path")
    output_dir = Path(output_dir)
    try:
        blocker = next((p for p in [output_dir, *output_dir.parents] if p.exists() and not p.is_dir()), None)
        if blocker == output_dir:
            raise KitError(f"--output-dir {output_dir} exists and is not a directory; choose another path")
        if blocker is not None:
            raise KitError(f"--output-dir {output_dir}: {blocker} is a file, not a directory; choose another path")
        parent = output_dir.resolve().parent
        if not make_parents and not parent.is_dir():
            raise KitError(f"--output-dir {output_dir}: its parent {parent} does not exist; create it first")
    except OSError as e:
        raise KitError(f"--output-dir {output_dir}: {e.strerror}; choose another path") from None
    probe = next(p for p in [output_dir, *output_dir.resolve().parents] if p.exists())
    if not os.access(probe, os.W_OK):
        raise KitError(f"--output-dir {output_dir}: {probe} is not writable; choose a directory you can write")
    return output_dir.resolve()  # as checked: `a/../b` is not to make a missing `a` on the way


def pull(ctx: Context, run_id: str, output_dir: Path, *, verify: bool = False,
         make_parents: bool = False) -> tuple[TransferStats, bool]:
    """Fetch a run's results, verified against results.manifest.json; (stats, complete).

    `.cloud-run-state.json` in output_dir remembers what the last pull installed (size,
    mtime, sha256 per file) and the run's status then. Unchanged local files are then not
    hashed again, and pulling a finished run whose results are all still in place needs no
    request at all: once its status is final nothing writes to its results or log again.
    `verify` ignores the state. A pull that cannot complete changes nothing (see pull_tree).
    """
    state = {} if verify else read_pull_state(output_dir, run_id)
    if all_in_place(output_dir, state):
        return TransferStats(skipped=len(state["files"])), True
    read_manifest(ctx, run_id)  # an unknown run is that, whatever the directory
    output_dir = check_output_dir(output_dir, make_parents=make_parents)
    prefix = protocol.run_prefix(run_id)
    # the status before the rest: final then means final
    status = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.STATUS)) or {}
    results = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.RESULTS_MANIFEST))
    packs = [join_key(prefix, p) for p in results.get("packs", [])] if results else []
    log = read_log(ctx, run_id)
    try:  # pull_tree makes output_dir when it has something to write; a refused pull leaves none
        stats = pull_tree(ctx.store, protocol.run_key(run_id, protocol.RESULTS), output_dir,
                          expected=results["files"] if results else None, packs=packs, known=state.get("files", {}),
                          label=f"pull {run_id}", check=lambda files: check_landing(files, (len(log), 256, 4096)))
    except OSError as e:
        raise KitError(f"could not write the results of {run_id} into {output_dir}: {local_write_error(e)}") from None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ".cloud-run-id").write_text(run_id + "\n")
        if log:
            (output_dir / ".cloud-run.log").write_bytes(log)
        files = {p: [*st, sha] for p, sha in stats.installed.items() if (st := _stat(output_dir, p))}
        # what READ reports of the run: its end, and what its GPU check found
        status = {k: status.get(k) for k in ("phase", "cause", "exit_code", "message", "gpu")}
        write_json_atomic(output_dir / PULL_STATE, {
            "run_id": run_id, "final": status["phase"] in protocol.FINAL, "complete": results is not None,
            "status": status, "files": files, "provider": ctx.provider.name, "store": ctx.store.url})
    except OSError as e:
        raise KitError(f"the results of {run_id} are in {output_dir}, but not its log and records: {e.strerror}; "
                       "free some space, then pull again") from None
    for rel in stats.kept:
        say(f"cloud-run: your local {output_dir / rel} differed from the run's; kept it as {rel}.orig")
    return stats, results is not None
