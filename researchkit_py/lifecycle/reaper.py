"""Stopping runs: one on request (terminate), and every instance of this tool that is past
its deadline or dead (the reaper, the third teardown layer)."""

from __future__ import annotations

from .. import protocol
from ..clouds.base import TOOL_LABEL
from ..errors import UsageError
from ..repull import reap_stamp, reaped_recently
from .context import Context
from .monitor import read_manifest


def terminate(ctx: Context, run_id: str) -> dict:
    manifest = read_manifest(ctx, run_id)
    if manifest["provider"] != ctx.provider.name:
        raise UsageError(f"run {run_id} ran on {manifest['provider']}; pass --backend {manifest['provider']}")
    ctx.provider.delete(manifest["instance"])
    key = protocol.run_key(run_id, protocol.STATUS)
    status = ctx.store.read_json_or_none(key) or {}
    if status.get("phase") not in protocol.FINAL:
        status = protocol.status_record(run_id, protocol.FAILED, cause=protocol.TERMINATED, exit_code=None,
                                        message="terminated by the user")
        ctx.store.write_json(key, status)
    return status


def reap_if_due(ctx: Context, *, force: bool = False) -> list[str]:
    """The reaper layer, run by every invocation: at most once per RK_REAP_INTERVAL seconds
    (default 300) per provider and bucket on this machine, and always when `force`d (launches).
    Listing instances costs a cloud SDK client and an API call; a few minutes' delay is
    nothing next to the VM's own deadline, which the cloud enforces."""
    if not force and reaped_recently(ctx.settings, ctx.provider.name, ctx.store.url):
        return []
    stamp = reap_stamp(ctx.settings, ctx.provider.name, ctx.store.url)
    names = reap(ctx)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return names


def reap(ctx: Context, dry_run: bool = False) -> list[str]:
    """Delete this tool's instances that are past their deadline or already dead (one list call)."""
    doomed = []
    at = protocol.now()
    for inst in ctx.provider.list():
        if inst.labels.get(TOOL_LABEL[0]) != TOOL_LABEL[1]:
            continue
        try:
            expires = float(inst.labels.get("researchkit-expires", "inf"))
        except ValueError:
            expires = 0.0  # a damaged label must not protect an instance forever
        if at >= expires or not inst.alive:
            doomed.append(inst.name)
            if not dry_run:
                ctx.provider.delete(inst.name)
    return doomed
