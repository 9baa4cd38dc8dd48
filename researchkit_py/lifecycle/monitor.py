"""Reading a run from the bucket (and the provider): its records, its state, its log;
waiting for it to end and for its VM to go."""

from __future__ import annotations

import codecs
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
    """The log as the bucket holds it: the whole of it, or what a VM that crashed had shipped."""
    return read_log_from(ctx, run_id, 0)


def read_log_from(ctx: Context, run_id: str, start: int) -> bytes:
    """The log's bytes from `start` on: a follower downloads only what it has not shown. After
    the log object's bytes come its chunks (on S3, while the log is short: protocol.LOG_CHUNKS),
    from where they end; a follower always stops where an object ends, where the next chunk
    starts."""
    try:
        data = ctx.store.get_tail(protocol.run_key(run_id, protocol.LOG), start)
    except NotFound:
        data = b""
    if not ctx.store.log_chunk_limit:
        return data
    parts, at = [data], start + len(data)
    while True:
        try:
            chunk = ctx.store.get_bytes(protocol.log_chunk_key(run_id, at))
        except NotFound:  # none yet; or the VM wrote the log whole and removed them: the next read has it
            return b"".join(parts)
        if not chunk:  # the VM writes none empty; one that is would hold the reader here forever
            return b"".join(parts)
        parts.append(chunk)
        at += len(chunk)


def has_log(ctx: Context, run_id: str) -> bool:
    """Whether the bucket holds any of the log (the object, or its chunks)."""
    return bool(ctx.store.list(protocol.run_key(run_id, protocol.LOG)))


def wait(ctx: Context, run_id: str, stream_log: bool = True) -> dict:
    """Poll until the run is final (or lost), echoing new log output to stderr."""
    manifest = read_manifest(ctx, run_id)
    shown, poll, warned = 0, ctx.poll_seconds(), ""
    text = codecs.getincrementaldecoder("utf-8")("replace")
    give_up = protocol.parse_iso(manifest["expires_at"]) + 600
    # between two reads: a poll's pause, cut short where the store sees the status or the log change
    pause = ctx.store.watch([protocol.run_key(run_id, protocol.STATUS), protocol.run_key(run_id, protocol.LOG)])
    while True:
        try:
            state = run_state(ctx, run_id, manifest)
            log = read_log_from(ctx, run_id, shown) if stream_log else b""
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
        if log:
            sys.stderr.write(text.decode(log))  # a character split between two reads comes whole
            sys.stderr.flush()
            shown += len(log)
        if state.get("phase") in protocol.FINAL:
            return state
        pause(poll)


def wait_quietly(ctx: Context, run_id: str, every: float = 60.0) -> dict:
    """Wait for a run still going to end, with a line when it starts, when its phase changes and
    every `every` seconds; bounded by its deadline (and the grace a VM has to report after it)."""
    manifest = read_manifest(ctx, run_id)
    expires = protocol.parse_iso(manifest["expires_at"])
    give_up = expires + 3 * int(manifest.get("heartbeat_seconds", 30)) + 60
    shown, last = None, 0.0
    while True:
        state = run_state(ctx, run_id, manifest)
        phase = state.get("phase")
        if phase in protocol.FINAL:
            return state
        now = time.time()
        if now > give_up:
            raise KitError(f"run {run_id} is still {phase} past its deadline ({manifest['expires_at']}); "
                           f"`cloud-run terminate {run_id}` stops it")
        if phase != shown or now - last >= every:
            say(f"cloud-run: waiting for {run_id}: {phase}, {int(now - protocol.parse_iso(manifest['created_at']))} s "
                f"since launch; its deadline is {manifest['expires_at']}")
            shown, last = phase, now
        time.sleep(ctx.poll_seconds())


def ensure_gone(ctx: Context, instance: str, timeout: float | None = None) -> bool:
    """After a final status the VM deletes itself; confirm it, or delete it ourselves.
    True when it went away on its own. A VM that stopped instead — its self-delete call failed
    and it powered off, or a `lost` run's VM that could not run our agent — is deleted now:
    nothing more comes from it, and a stopped VM's disk bills."""
    if timeout is None:
        timeout = ctx.settings.number("RK_SELF_DELETE_WAIT", 10 if ctx.embedded else 180)
    # an embedded VM's record is a file read: it goes within milliseconds of the final status
    poll = min(ctx.poll_seconds(), 0.02) if ctx.embedded else ctx.poll_seconds()
    end = time.time() + timeout
    while time.time() < end:
        inst = ctx.provider.get(instance)
        if inst is None:
            return True
        if not inst.alive:
            ctx.provider.delete(instance)
            return False
        time.sleep(poll)
    say(f"cloud-run: {instance} did not delete itself within {timeout:g} s; deleting it")
    ctx.provider.delete(instance)
    return False
