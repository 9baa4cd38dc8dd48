"""Launching a run: run id, bundle, data, startup script, manifest, then the instance."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import protocol
from ..clouds.base import TOOL_LABEL, InstanceRequest, Machine
from ..clouds.registry import price_per_hour
from ..errors import KitError
from ..storage.transfer import put_tree
from .context import Context

if TYPE_CHECKING:
    from ..bundle import Bundle


@dataclass
class LaunchOptions:
    command: str
    spec: str = ""
    data_dirs: list[str] = field(default_factory=list)
    max_hours: float = 4.0
    env: dict[str, str] = field(default_factory=dict)
    machine: Machine = field(default_factory=Machine)  # machine.choose decides it; "" type: the provider's default
    spot: bool = False
    experiment: str = ""
    label: str = ""
    detached: bool = False
    max_cost: float | None = None
    project_root: Path | None = None


@dataclass
class Launch:
    run_id: str
    manifest: protocol.RunManifest
    script: str
    request: InstanceRequest
    machine: Machine
    code_uploaded_bytes: int = 0


def launch_machine(ctx: Context, opts: LaunchOptions) -> Machine:
    """The machine the instance gets: the chosen one, its type filled in with the provider's default."""
    return replace(opts.machine, machine_type=opts.machine.machine_type or ctx.provider.default_machine_type())


def worst_case_cost(ctx: Context, opts: LaunchOptions) -> float | None:
    """Price × max hours; None when the price is unknown (then only --max-cost insists on one)."""
    try:
        price = price_per_hour(ctx.provider.name, launch_machine(ctx, opts), ctx.settings)
    except KitError:
        if opts.max_cost is not None:
            raise
        return None
    return round(price * opts.max_hours, 2)


def plan_launch(ctx: Context, opts: LaunchOptions, *, upload: bool = True, shipped: Bundle | None = None) -> Launch:
    """Everything up to the instance request: run id, bundle, data, script, manifest. With
    `shipped`, the bundle (and the rest of the agent) another launch of this command made and
    sent: nothing is packed or sent again."""
    root = opts.project_root or ctx.settings.root
    machine = launch_machine(ctx, opts)
    worst = worst_case_cost(ctx, opts)
    if opts.max_cost is not None and worst is not None and worst > opts.max_cost:
        raise KitError(f"worst case ${worst:.2f} ({opts.max_hours:g} h of {machine.describe()}) exceeds --max-cost "
                       f"${opts.max_cost:.2f}; lower --max-hours or choose a cheaper --machine-type")
    for d in opts.data_dirs:
        if not (root / d).is_dir():
            raise KitError(f"--data-dirs: {d} is not a directory under {root}")
    label = opts.label or (Path(opts.spec).stem if opts.spec else opts.command.split()[0] if opts.command.split() else "run")
    run_id = protocol.new_run_id(label)
    hard, soft = protocol.deadlines(opts.max_hours)
    heartbeat = ctx.settings.integer("RK_HEARTBEAT_SECONDS", 2 if ctx.embedded else 30)
    from ..startup import ScriptPlan, render_startup_script  # launch-only: kept off the path of pull and status

    bundle = shipped or bundle_for(ctx, opts)
    try:  # the bundle is a temporary file: gone whatever fails below
        results_subdir = ctx.settings["RK_RESULTS_SUBDIR"]
        script = render_startup_script(ScriptPlan(
            run_id=run_id, store_url=ctx.store.url, provider=ctx.provider.name, bundle_key=bundle.key,
            command=opts.command, soft_deadline_seconds=soft, heartbeat_seconds=heartbeat,
            deadline_lines=ctx.provider.deadline_lines(hard), self_delete_lines=ctx.provider.self_delete_lines(),
            env=opts.env, results_subdir=results_subdir, has_data=bool(opts.data_dirs),
            vm_python=ctx.settings.text("RK_VM_PYTHON"),
            gpu=f"{machine.gpu}:{machine.gpu_count}" if machine.gpu_count else "",
            gpu_wait_seconds=ctx.settings.integer("RK_GPU_DRIVER_WAIT"),
        ))
        created = protocol.now()
        manifest = protocol.RunManifest(
            run_id=run_id, provider=ctx.provider.name, instance=protocol.instance_name(run_id), command=opts.command,
            bundle=bundle.key, created_at=protocol.iso(created), expires_at=protocol.iso(created + hard),
            max_hours=opts.max_hours, heartbeat_seconds=heartbeat, machine_type=machine.machine_type,
            gpu=machine.gpu, gpu_count=machine.gpu_count,
            spec=opts.spec, experiment=opts.experiment, results_subdir=results_subdir,
            data_dirs=list(opts.data_dirs), env_keys=sorted(opts.env), detached=opts.detached,
            worst_case_cost_usd=worst,
        )
        labels = {TOOL_LABEL[0]: TOOL_LABEL[1], "researchkit-run": run_id,
                  "researchkit-expires": str(int(created + hard))}
        if opts.experiment:
            labels["researchkit-exp"] = protocol.slug(opts.experiment, 60)
        request = InstanceRequest(manifest.instance, run_id, script, labels, hard, machine.machine_type, opts.spot,
                                  machine.gpu_count, machine.accelerator, machine.attach)
        plan = Launch(run_id, manifest, script, request, machine)
        if upload:
            if shipped is None:
                plan.code_uploaded_bytes = ship(ctx, bundle)
            for d in opts.data_dirs:
                put_tree(ctx.store, root / d, protocol.run_key(run_id, f"{protocol.DATA}/{d.strip('/')}"), label=f"data {d}")
    finally:
        if shipped is None:
            os.unlink(bundle.path)
    return plan


def bundle_for(ctx: Context, opts: LaunchOptions) -> Bundle:
    from ..bundle import make_bundle

    return make_bundle(opts.project_root or ctx.settings.root, ctx.settings.number("RK_MAX_BUNDLE_MB"),
                       extra_exclude=tuple(f"{d.strip('/')}/*" for d in opts.data_dirs))


def ship(ctx: Context, bundle: Bundle) -> int:
    """The code bundle and the rest of the VM agent into the bucket, each named by its content
    and sent only when not there yet; the bytes of code sent."""
    from ..bundle import upload_bundle
    from ..startup import agent_rest

    sent = upload_bundle(ctx.store, bundle)
    agent_key, agent = agent_rest(ctx.provider.name, ctx.store.url)
    if not ctx.store.exists(agent_key):
        ctx.store.put_bytes(agent_key, agent)
    return sent


def dry_run_report(ctx: Context, plan: Launch) -> str:
    """What a dry run shows besides the script: the machine, its worst case, the request itself."""
    m = plan.manifest
    worst = (f"${m.worst_case_cost_usd:.2f} ({m.max_hours:g} h)" if m.worst_case_cost_usd is not None
             else "unknown (no price known for it: set RK_PRICE_PER_HOUR)")
    body = json.dumps(ctx.provider.request_body(plan.request), indent=2)
    image = ctx.provider.image(plan.request)
    return (f"machine: {plan.machine.describe()} ({plan.machine.source or 'default'})\n"
            + (f"image: {image}\n" if image else "") + f"worst case: {worst}\nrequest: {body}")


def launch(ctx: Context, opts: LaunchOptions, on_run_id: Callable[[str], None] | None = None) -> Launch:
    """Plan, write the manifest (before the VM exists, so the reaper can always find it), create.
    `on_run_id` hears the run id once the run is recorded (before the instance is asked for)."""
    if ctx.default_bucket:  # a bucket the user named is never created: a typo must not make a new one
        ctx.provider.prepare(ctx.store)
    return create(ctx, plan_launch(ctx, opts), on_run_id)


def create(ctx: Context, plan: Launch, on_run_id: Callable[[str], None] | None = None) -> Launch:
    """The manifest, then the instance; if that fails, no instance and a FAILED status that says why
    (an interrupt: CANCELLED, and nothing left)."""
    manifest_key = protocol.run_key(plan.run_id, protocol.MANIFEST)
    ctx.provider.check(plan.request)  # a request the cloud would refuse leaves no run behind
    try:
        ctx.store.write_json(manifest_key, plan.manifest.to_dict())
        if on_run_id is not None:
            on_run_id(plan.run_id)
        instance = ctx.provider.create(plan.request)
    except BaseException as e:
        # Leave nothing running and a record that says why (an interruption may come while
        # the manifest's write or the instance request is in flight: both may have happened).
        if isinstance(e, KeyboardInterrupt):  # the caller stopped it: cancelled, not a failure
            from .cancel import cancelled_launch

            cancelled_launch(ctx, plan.run_id, plan.manifest.instance, str(e) or "interrupted")
            e.run_id = plan.run_id  # type: ignore[attr-defined]  # the caller names the run it stopped
            raise
        try:
            ctx.provider.delete(plan.manifest.instance)
        finally:
            reason = str(e)
            ctx.store.write_json(protocol.run_key(plan.run_id, protocol.STATUS), protocol.status_record(
                plan.run_id, protocol.FAILED, cause=protocol.BOOT_ERROR, exit_code=None,
                message=f"launch failed: {reason}"))
        raise
    if instance.zone and instance.zone != plan.manifest.zone:
        plan.manifest.zone = instance.zone
        ctx.store.write_json(manifest_key, plan.manifest.to_dict())
    return plan
