"""Listing a bucket's runs, newest first, at the scale of a research month.

One listing of the run prefixes gives the ids; an id carries its launch time
(protocol.new_run_id), so the newest `limit` runs are known before any record is read. A
run whose status is final never changes again: its row is remembered in a cache file per
bucket (Settings.cache_home()/runs/), and listing that bucket again reads only the runs that
were still going. The instances are listed only when such a run needs them (on GCE that is
the Compute client: seconds of imports).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import protocol
from .context import Context
from .monitor import run_state

CACHE_VERSION = 1
RUN_TIME = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{8}$")
BATCH = 64  # runs read per round while fewer than `limit` rows are found


def newest_first(run_ids: list[str]) -> list[str]:
    """Ids by their launch time, newest first; an id without one (not ours) after them all."""
    def key(run_id: str) -> tuple[str, str]:
        m = RUN_TIME.search(run_id)
        return (m.group(1) if m else "", run_id)

    return sorted(run_ids, key=key, reverse=True)


def cache_path(ctx: Context) -> Path:
    digest = hashlib.sha256(ctx.store.url.encode()).hexdigest()[:24]
    return ctx.settings.cache_home() / "runs" / f"{digest}.json"


def load_cache(path: Path, bucket: str) -> dict[str, dict]:
    """The finished runs remembered for this bucket; {} when there is no cache or it cannot be
    read (a damaged file is only a slower listing: it is rewritten)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("bucket") != bucket:
        return {}
    runs = data.get("runs")
    if not isinstance(runs, dict):
        return {}
    return {k: v for k, v in runs.items() if isinstance(v, dict) and v.get("run_id") == k
            and v.get("phase") in protocol.FINAL}


def save_cache(path: Path, bucket: str, new: dict[str, dict], present: set[str]) -> None:
    """Merge `new` rows into the file, dropping runs no longer in the bucket. Another `ls` may
    write at the same time: each writes a whole file under a name of its own and renames it,
    so a reader sees one or the other, never a mixture; at worst a row is read again next time."""
    runs = {k: v for k, v in load_cache(path, bucket).items() if k in present}
    runs.update(new)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "bucket": bucket, "runs": runs}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written costs time, not the answer


def list_runs(ctx: Context, experiment: str | None = None, limit: int | None = None) -> list[dict]:
    """The bucket's runs as rows, newest first: all of them, or the newest `limit` (of
    `experiment`, when given)."""
    ids = newest_first(ctx.store.list_dirs(protocol.RUNS))
    path = cache_path(ctx)
    cached = load_cache(path, ctx.store.url)
    live_lock, live_names = threading.Lock(), []  # the live instances, listed once if needed

    def live() -> set[str]:
        with live_lock:
            if not live_names:
                live_names.append({i.name for i in ctx.provider.list() if i.alive})
            return live_names[0]

    def read(run_id: str) -> tuple[dict | None, bool]:
        """(row, final) of one run from the bucket; no row for a prefix without a manifest."""
        manifest = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.MANIFEST))
        if not isinstance(manifest, dict):
            return None, False
        status = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.STATUS))
        final = isinstance(status, dict) and status.get("phase") in protocol.FINAL
        if final:
            state = status
        else:
            state = run_state(ctx, run_id, manifest, alive=manifest["instance"] in live())
        return _row(run_id, manifest, state), final

    rows: list[dict] = []
    found: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            todo = [i for i in batch if i not in cached]
            got = dict(zip(todo, pool.map(read, todo), strict=True))
            for run_id in batch:
                if run_id in cached:
                    row = cached[run_id]
                else:
                    row, final = got[run_id]
                    if row and final:
                        found[run_id] = row
                if row and (not experiment or row.get("experiment") == experiment):
                    rows.append(row)
            if limit and len(rows) >= limit:
                break
    if found:
        save_cache(path, ctx.store.url, found, set(ids))
    return rows[:limit] if limit else rows


def _row(run_id: str, manifest: dict, state: dict) -> dict:
    return {"run_id": run_id, "provider": manifest["provider"], "experiment": manifest.get("experiment", ""),
            "phase": state.get("phase"), "exit_code": state.get("exit_code"), "cause": state.get("cause"),
            "created_at": manifest["created_at"], "command": manifest["command"], "zone": manifest.get("zone", "")}
