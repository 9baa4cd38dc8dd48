"""The pull's own record in the output directory, and the unchanged re-pull answered from it
alone: a finished run whose results are all still in place needs no bucket, no provider and
no cloud SDK, so `cloud-run pull` answers it before importing them (the lifecycle, the
registry). Standard library only; reaper.py shares the reaper's stamp from here, since a
re-pull answered this way skips the reaper only while its last pass is recent."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from .settings import Settings

PULL_STATE = ".cloud-run-state.json"


def read_pull_state(output_dir: Path, run_id: str) -> dict:
    """What the last pull of this run into output_dir recorded ({} if none): `status` (the
    run's phase, cause, exit code when pulled), `final` (that phase was final), `complete`
    (its results manifest was there), `files` ({path: [size, mtime_ns, sha256]} as installed),
    `provider` and `store` (where it was pulled from)."""
    try:
        state = json.loads((Path(output_dir) / PULL_STATE).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(state, dict) and state.get("run_id") == run_id and isinstance(state.get("files"), dict)
    return state if ok else {}


def file_stat(root: Path | str, rel: str) -> list[int] | None:
    """[size, mtime_ns] of a regular file under root, None for anything else."""
    try:
        st = os.lstat(os.path.join(root, rel))  # not pathlib: this runs for every file of every pull
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else None


def all_in_place(output_dir: Path, state: dict) -> bool:
    """The run was final and complete when last pulled, and every file it installed is still
    there, unchanged in size and mtime: nothing can have changed on either side."""
    if not (state.get("final") and state.get("complete")):
        return False
    try:
        return all(file_stat(output_dir, p) == v[:2] for p, v in state["files"].items())
    except (TypeError, AttributeError, IndexError):  # a record damaged by hand: pull properly
        return False


def reap_stamp(settings: Settings, provider: str, store_url: str) -> Path:
    """The file whose mtime says when the reaper last listed `provider`'s instances for this bucket."""
    key = hashlib.sha256(f"{provider} {store_url}".encode()).hexdigest()[:16]
    return settings.state_home() / "reaped" / key


def reaped_recently(settings: Settings, provider: str, store_url: str) -> bool:
    """The reaper listed them less than RK_REAP_INTERVAL seconds ago (reaper.reap_if_due skips it then)."""
    try:
        age = time.time() - reap_stamp(settings, provider, store_url).stat().st_mtime
    except OSError:
        return False
    return age < settings.number("RK_REAP_INTERVAL")


def named_cloud(settings: Settings, backend: str | None) -> str:
    """The cloud this invocation names, as registry.cloud_for resolves it, without importing the
    clouds' descriptors (a third of an unchanged re-pull): a name that is not a cloud matches
    no pull's record, and the whole way then says what is wrong with it."""
    name = backend or settings.get("RK_BACKEND") or settings["COMPUTE_TARGET"] or "local"
    return "local" if name == "sandbox" else name


def unchanged(settings: Settings, run_id: str, output_dir: Path, backend: str | None) -> dict | None:
    """The record of a re-pull that has nothing to do and may skip the reaper, or None (then
    the pull goes the whole way). The reaper stamp consulted is that of the cloud this
    invocation names (`backend`, else the settings) and of the bucket the run was pulled
    from (RK_BUCKET, when set, must be that bucket)."""
    state = read_pull_state(output_dir, run_id)
    provider = named_cloud(settings, backend)
    if not all_in_place(output_dir, state) or state.get("provider") != provider:
        return None
    store = state.get("store")
    bucket = settings.get("RK_BUCKET")
    if not isinstance(store, str) or (bucket and bucket.rstrip("/") != store.rstrip("/")):
        return None
    return state if reaped_recently(settings, provider, store) else None
