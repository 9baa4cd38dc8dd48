"""Many launches from one command (`detached --exp 1 … 20`): one code bundle packed and sent
once, one API client, the instance requests in parallel. Each launch still ends on its own:
a run the cloud refused (quota, capacity) gets its FAILED status and its error, the others
go on; every instance requested has its manifest in the bucket first, so none is ever
unaccounted for (the reaper finds it by its label, `ls` by its manifest)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .. import protocol
from ..errors import KitError
from .context import Context
from .launch import Launch, LaunchOptions, bundle_for, create, plan_launch, ship

PARALLEL = 16  # instance requests in flight at once: each is an HTTP call waiting on the cloud


@dataclass
class Outcome:
    opts: LaunchOptions
    plan: Launch | None = None  # None: it failed before a run id was made
    error: BaseException | None = None


def launch_many(ctx: Context, options: list[LaunchOptions]) -> list[Outcome]:
    """Launch every one of `options` (same project, same data dirs); an Outcome each, in order.
    What fails before any instance is requested (the bundle, a --max-cost) raises."""
    if len({(o.project_root, tuple(o.data_dirs)) for o in options}) > 1:
        raise KitError("launches of one command share their project and data dirs")  # a caller's mistake
    if ctx.default_bucket:
        ctx.provider.prepare(ctx.store)
    bundle = bundle_for(ctx, options[0])
    try:
        sent = ship(ctx, bundle)
        plans = [plan_launch(ctx, o, shipped=bundle) for o in options]
    finally:
        os.unlink(bundle.path)
    if plans:
        plans[0].code_uploaded_bytes = sent
    # the one API client, made before the threads share it (a provider without one has none)
    getattr(ctx.provider, "client", None)
    outcomes = [Outcome(o, p) for o, p in zip(options, plans, strict=True)]
    stop = threading.Event()

    def one(outcome: Outcome) -> None:
        if stop.is_set():  # interrupted before its turn: never requested, and its record says so
            outcome.error = KeyboardInterrupt()
            ctx.store.write_json(protocol.run_key(outcome.plan.run_id, protocol.STATUS), protocol.status_record(
                outcome.plan.run_id, protocol.FAILED, cause=protocol.BOOT_ERROR, exit_code=None,
                message="launch failed: interrupted before the instance was requested"))
            return
        try:
            create(ctx, outcome.plan)
        except Exception as e:  # noqa: BLE001 - each launch reports its own failure
            outcome.error = e

    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(outcomes))) as pool:
        futures = [pool.submit(one, o) for o in outcomes]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            stop.set()  # what is in flight finishes (or is deleted by create); the rest is not requested
            raise
    return outcomes
