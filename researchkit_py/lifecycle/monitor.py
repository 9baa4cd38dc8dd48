"""Reading a run from the bucket (and the provider): its records, its state, its log;
waiting for it to end and for its VM to go."""

from __future__ import annotations

import sys
import time

from .. import protocol
from ..errors import KitError, NotFound, ProviderError, StorageError, say
from .context import Context


def read_manifest(ctx: Context, run_id: str) -> dict:
    try:
        return ctx.store.read_json(protocol.run_key(protocol.check_run_id(run_id), protocol.MANIFEST))
    except NotFound:
        raise KitError(f"no run {run_id} in {ctx.store.url}; `cloud-run ls` lists the runs there") from None


def read_heartbeat(ctx: Context, run_id: str) -> float | None:
    try:
        return float(ctx.store.get_bytes(protocol.run_key(run_id, protocol.HEARTBEAT)).decode().strip())
    except (NotFound, ValueError):
        return None


def run_state(ctx: Context, run_id: str, manifest: dict | None = None, alive: bool | None = None) -> dict:
    manifest = manifest or read_manifest(ctx, run_id)
    status = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.STATUS))
    if status and status.get("phase") in protocol.FINAL:
        return {**status, "run_id": run_id}
    if alive is None:
        inst = ctx.provider.get(manifest["instance"]) if manifest["provider"] == ctx.provider.name else None
        alive = bool(inst and inst.alive)
    state = protocol.effective_status(manifest, status, read_heartbeat(ctx, run_id), alive)
    return {**state, "run_id": run_id}


def read_log(ctx: Context, run_id: str) -> bytes:
    try:
        return ctx.store.get_bytes(protocol.run_key(run_id, protocol.LOG))
    except NotFound:
        return b""


def wait(ctx: Context, run_id: str, stream_log: bool = True) -> dict:
    """Poll until the run is final (or lost), echoing new log output to stderr."""
    manifest = read_manifest(ctx, run_id)
    shown, poll, warned = 0, ctx.poll_seconds(), ""
    give_up = protocol.parse_iso(manifest["expires_at"]) + 600
    while True:
        try:
            state = run_state(ctx, run_id, manifest)
            log = read_log(ctx, run_id) if stream_log else b""
        except (ProviderError, StorageError) as e:
            # A blip of the API or the bucket must not end a night-long wait; the VM goes on
            # either way. Past the run's deadline there is nothing left to wait for.
            if time.time() > give_up:
                raise
            if str(e) != warned:
                say(f"cloud-run: warning: {e}; still waiting")
                warned = str(e)
            time.sleep(poll)
            continue
        if len(log) > shown:
            sys.stderr.write(log[shown:].decode("utf-8", "replace"))
            sys.stderr.flush()
            shown = len(log)
        if state.get("phase") in protocol.FINAL:
            return state
        time.sleep(poll)


def ensure_gone(ctx: Context, instance: str, timeout: float | None = None, *, lost: bool = False) -> bool:
    """After a final status the VM deletes itself; confirm it, or delete it ourselves.
    True when it went away on its own. A `lost` run's VM could not delete itself: if it
    stopped (as a VM that could not run our agent does), it is deleted now (its disk bills)."""
    if timeout is None:
        timeout = ctx.settings.number("RK_SELF_DELETE_WAIT", 10 if ctx.embedded else 180)
    end = time.time() + timeout
    while time.time() < end:
        inst = ctx.provider.get(instance)
        if inst is not None and not inst.alive and lost:
            ctx.provider.delete(instance)
            return False
        if inst is None or not inst.alive:
            return True
        time.sleep(ctx.poll_seconds())
    say(f"cloud-run: {instance} did not delete itself within {timeout:g} s; deleting it")
    ctx.provider.delete(instance)
    return False
