"""The run lifecycle every provider shares: launch, wait, pull, inspect, terminate, reap."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import runs
from .compute import InstanceRequest, Provider, get_provider
from .compute.base import TOOL_LABEL
from .config import Settings
from .errors import KitError, NotFound, ProviderError, StorageError, UsageError
from .storage import Store, join_key, open_store
from .storage.transfer import TransferStats, pull_tree, put_tree

TARGET_BACKEND = {"local": "local", "sandbox": "local", "gce": "gce", "ec2": "ec2"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Context:
    settings: Settings
    provider: Provider
    store: Store
    default_bucket: bool = False  # the provider's own bucket (created on first launch), not RK_BUCKET

    @classmethod
    def open(cls, backend: str | None = None, settings: Settings | None = None) -> Context:
        settings = settings or Settings()
        target = settings["COMPUTE_TARGET"] or "local"
        if target not in TARGET_BACKEND:
            raise KitError(f"COMPUTE_TARGET={target!r} is not one of {', '.join(TARGET_BACKEND)}; "
                           "fix it in .orchestration-kit.env or the environment")
        name = backend or settings.get("RK_BACKEND") or TARGET_BACKEND[target]
        provider = get_provider(name, settings)
        bucket = settings.get("RK_BUCKET")
        return cls(settings, provider, open_store(bucket or provider.default_store_url()), default_bucket=not bucket)

    def poll_seconds(self) -> float:
        return self.settings.get_float("RK_POLL_SECONDS", 0.2 if self.provider.name == "local" else 2.0)


@dataclass
class LaunchOptions:
    command: str
    spec: str = ""
    data_dirs: list[str] = field(default_factory=list)
    max_hours: float = 4.0
    env: dict[str, str] = field(default_factory=dict)
    machine_type: str = ""
    spot: bool = False
    experiment: str = ""
    label: str = ""
    detached: bool = False
    max_cost: float | None = None
    project_root: Path | None = None


@dataclass
class Launch:
    run_id: str
    manifest: runs.RunManifest
    script: str
    code_uploaded_bytes: int = 0
    request: InstanceRequest | None = None


def deadlines(max_hours: float) -> tuple[int, int]:
    """(hard, soft) seconds: the soft deadline leaves the VM time to upload before the hard one."""
    if max_hours <= 0:
        raise UsageError("--max-hours must be positive")
    hard = max(1, math.ceil(max_hours * 3600))
    grace = min(300, max(10, hard // 20))  # the trap's uploads and self-delete need a few seconds
    return hard, max(1, hard - grace)


def worst_case_cost(ctx: Context, opts: LaunchOptions) -> float | None:
    """Price × max hours; None when the price is unknown (then only --max-cost insists on one)."""
    from .preflight import price_per_hour

    try:
        price = price_per_hour(ctx.provider.name, opts.machine_type or ctx.provider.default_machine_type())
    except KitError:
        if opts.max_cost is not None:
            raise
        return None
    return round(price * opts.max_hours, 2)


def plan_launch(ctx: Context, opts: LaunchOptions, *, upload: bool = True) -> Launch:
    """Everything up to the instance request: run id, bundle, data, script, manifest."""
    root = opts.project_root or Path(ctx.settings.root)
    worst = worst_case_cost(ctx, opts)
    if opts.max_cost is not None and worst is not None and worst > opts.max_cost:
        raise KitError(f"worst case ${worst:.2f} ({opts.max_hours:g} h of "
                       f"{opts.machine_type or ctx.provider.default_machine_type()}) exceeds --max-cost "
                       f"${opts.max_cost:.2f}; lower --max-hours or choose a cheaper --machine-type")
    for d in opts.data_dirs:
        if not (root / d).is_dir():
            raise KitError(f"--data-dirs: {d} is not a directory under {root}")
    label = opts.label or (Path(opts.spec).stem if opts.spec else opts.command.split()[0] if opts.command.split() else "run")
    run_id = runs.new_run_id(label)
    hard, soft = deadlines(opts.max_hours)
    heartbeat = ctx.settings.get_int("RK_HEARTBEAT_SECONDS", 2 if ctx.provider.name == "local" else 30)
    from .bundle import make_bundle, upload_bundle  # launch-only: kept off the path of pull and status
    from .startup import ScriptPlan, render_startup_script

    bundle = make_bundle(root, ctx.settings.get_float("RK_MAX_BUNDLE_MB"),
                         extra_exclude=tuple(f"{d.strip('/')}/*" for d in opts.data_dirs))
    results_subdir = ctx.settings["RK_RESULTS_SUBDIR"]
    script = render_startup_script(ScriptPlan(
        run_id=run_id, store_url=ctx.store.url, provider=ctx.provider.name, bundle_key=bundle.key,
        command=opts.command, soft_deadline_seconds=soft, heartbeat_seconds=heartbeat,
        deadline_lines=ctx.provider.deadline_lines(hard), self_delete_lines=ctx.provider.self_delete_lines(),
        env=opts.env, results_subdir=results_subdir, has_data=bool(opts.data_dirs),
        vm_python=ctx.settings.get("RK_VM_PYTHON", ""),
    ))
    created = runs.now()
    manifest = runs.RunManifest(
        run_id=run_id, provider=ctx.provider.name, instance=runs.instance_name(run_id), command=opts.command,
        bundle=bundle.key, created_at=runs.iso(created), expires_at=runs.iso(created + hard),
        max_hours=opts.max_hours, heartbeat_seconds=heartbeat, machine_type=opts.machine_type,
        spec=opts.spec, experiment=opts.experiment, results_subdir=results_subdir,
        data_dirs=list(opts.data_dirs), env_keys=sorted(opts.env), detached=opts.detached,
        worst_case_cost_usd=worst,
    )
    labels = {TOOL_LABEL[0]: TOOL_LABEL[1], "researchkit-run": run_id,
              "researchkit-expires": str(int(created + hard))}
    if opts.experiment:
        labels["researchkit-exp"] = runs.slug(opts.experiment, 60)
    request = InstanceRequest(manifest.instance, run_id, script, labels, hard, opts.machine_type, opts.spot)
    launch = Launch(run_id, manifest, script, request=request)
    if upload:
        launch.code_uploaded_bytes = upload_bundle(ctx.store, bundle)
        for d in opts.data_dirs:
            put_tree(ctx.store, root / d, f"{runs.run_prefix(run_id)}/data/{d.strip('/')}", label=f"data {d}")
    os.unlink(bundle.path)
    return launch


def launch(ctx: Context, opts: LaunchOptions) -> Launch:
    """Plan, write the manifest (before the VM exists, so the reaper can always find it), create."""
    if ctx.default_bucket:  # a bucket the user named is never created: a typo must not make a new one
        ctx.provider.prepare(ctx.store)
    plan = plan_launch(ctx, opts)
    prefix = runs.run_prefix(plan.run_id)
    assert plan.request is not None
    try:
        ctx.store.write_json(f"{prefix}/manifest.json", plan.manifest.to_dict())
        instance = ctx.provider.create(plan.request)
    except BaseException as e:
        # Leave nothing running and a record that says why (an interruption may come while
        # the manifest's write or the instance request is in flight: both may have happened).
        try:
            ctx.provider.delete(plan.manifest.instance)
        finally:
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
            ctx.store.write_json(f"{prefix}/status.json", {
                "run_id": plan.run_id, "phase": "FAILED", "cause": "boot_error", "exit_code": None,
                "message": f"launch failed: {reason}", "updated_at": runs.iso(runs.now())})
        raise
    if instance.zone and instance.zone != plan.manifest.zone:
        plan.manifest.zone = instance.zone
        ctx.store.write_json(f"{prefix}/manifest.json", plan.manifest.to_dict())
    return plan


# --- reading a run ------------------------------------------------------------------
def read_manifest(ctx: Context, run_id: str) -> dict:
    try:
        return ctx.store.read_json(f"{runs.run_prefix(runs.check_run_id(run_id))}/manifest.json")
    except NotFound:
        raise KitError(f"no run {run_id} in {ctx.store.url}; `cloud-run ls` lists the runs there") from None


def read_heartbeat(ctx: Context, run_id: str) -> float | None:
    try:
        return float(ctx.store.get_bytes(f"{runs.run_prefix(run_id)}/heartbeat").decode().strip())
    except (NotFound, ValueError):
        return None


def run_state(ctx: Context, run_id: str, manifest: dict | None = None, alive: bool | None = None) -> dict:
    manifest = manifest or read_manifest(ctx, run_id)
    status = ctx.store.read_json_or_none(f"{runs.run_prefix(run_id)}/status.json")
    if status and status.get("phase") in runs.FINAL:
        return {**status, "run_id": run_id}
    if alive is None:
        inst = ctx.provider.get(manifest["instance"]) if manifest["provider"] == ctx.provider.name else None
        alive = bool(inst and inst.alive)
    state = runs.effective_status(manifest, status, read_heartbeat(ctx, run_id), alive)
    return {**state, "run_id": run_id}


def list_runs(ctx: Context, experiment: str | None = None) -> list[dict]:
    ids = ctx.store.list_dirs("runs")
    live = {i.name for i in ctx.provider.list() if i.alive}

    def one(run_id: str) -> dict | None:
        manifest = ctx.store.read_json_or_none(f"runs/{run_id}/manifest.json")
        if manifest is None or (experiment and manifest.get("experiment") != experiment):
            return None
        state = run_state(ctx, run_id, manifest, alive=manifest["instance"] in live)
        return {"run_id": run_id, "provider": manifest["provider"], "experiment": manifest.get("experiment", ""),
                "phase": state.get("phase"), "exit_code": state.get("exit_code"), "cause": state.get("cause"),
                "created_at": manifest["created_at"], "command": manifest["command"], "zone": manifest.get("zone", "")}

    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = [r for r in pool.map(one, ids) if r]
    return sorted(rows, key=lambda r: (r["created_at"], r["run_id"]))


def read_log(ctx: Context, run_id: str) -> bytes:
    try:
        return ctx.store.get_bytes(f"{runs.run_prefix(run_id)}/logs/run.log")
    except NotFound:
        return b""


# --- waiting, pulling --------------------------------------------------------------
def wait(ctx: Context, run_id: str, stream_log: bool = True) -> dict:
    """Poll until the run is final (or lost), echoing new log output to stderr."""
    manifest = read_manifest(ctx, run_id)
    shown, poll, warned = 0, ctx.poll_seconds(), ""
    give_up = runs.parse_iso(manifest["expires_at"]) + 600
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
        if state.get("phase") in runs.FINAL:
            return state
        time.sleep(poll)


def ensure_gone(ctx: Context, instance: str, timeout: float | None = None) -> bool:
    """After a final status the VM deletes itself; confirm it, or delete it ourselves.
    True when it went away on its own."""
    if timeout is None:
        timeout = ctx.settings.get_float("RK_SELF_DELETE_WAIT", 10 if ctx.provider.name == "local" else 180)
    end = time.time() + timeout
    while time.time() < end:
        inst = ctx.provider.get(instance)
        if inst is None or not inst.alive:
            return True
        time.sleep(ctx.poll_seconds())
    say(f"cloud-run: {instance} did not delete itself within {timeout:g} s; deleting it")
    ctx.provider.delete(instance)
    return False


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


PULL_STATE = ".cloud-run-state.json"


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
    prefix = runs.run_prefix(run_id)
    status = ctx.store.read_json_or_none(f"{prefix}/status.json") or {}  # before the rest: final then means final
    results = ctx.store.read_json_or_none(f"{prefix}/results.manifest.json")
    output_dir.mkdir(parents=True, exist_ok=True)
    packs = [join_key(prefix, p) for p in results.get("packs", [])] if results else []
    stats = pull_tree(ctx.store, f"{prefix}/results", output_dir, expected=results["files"] if results else None,
                      packs=packs, known=state.get("files", {}), label=f"pull {run_id}")
    (output_dir / ".cloud-run-id").write_text(run_id + "\n")
    log = read_log(ctx, run_id)
    if log:
        (output_dir / ".cloud-run.log").write_bytes(log)
    for rel in stats.kept:
        say(f"cloud-run: your local {output_dir / rel} differed from the run's; kept it as {rel}.orig")
    if results:
        final = status.get("phase") in runs.FINAL
        files = {p: [*_stat(output_dir, p), sha] for p, sha in stats.installed.items()}
        _write_json_atomic(output_dir / PULL_STATE, {"run_id": run_id, "final": final, "files": files})
    return stats, results is not None


def _stat(root: Path, rel: str) -> list[int] | None:
    import stat

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


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# --- stopping ------------------------------------------------------------------------
def terminate(ctx: Context, run_id: str) -> dict:
    manifest = read_manifest(ctx, run_id)
    if manifest["provider"] != ctx.provider.name:
        raise UsageError(f"run {run_id} ran on {manifest['provider']}; pass --backend {manifest['provider']}")
    ctx.provider.delete(manifest["instance"])
    prefix = runs.run_prefix(run_id)
    status = ctx.store.read_json_or_none(f"{prefix}/status.json") or {}
    if status.get("phase") not in runs.FINAL:
        status = {"run_id": run_id, "phase": "FAILED", "cause": "terminated", "exit_code": None,
                  "message": "terminated by the user", "updated_at": runs.iso(runs.now())}
        ctx.store.write_json(f"{prefix}/status.json", status)
    return status


def reap_if_due(ctx: Context, *, force: bool = False) -> list[str]:
    """The reaper layer, run by every invocation: at most once per RK_REAP_INTERVAL seconds
    (default 300) per provider and bucket on this machine, and always when `force`d (launches).
    Listing instances costs a cloud SDK client and an API call; a few minutes' delay is
    nothing next to the VM's own deadline, which the cloud enforces."""
    import hashlib

    key = hashlib.sha256(f"{ctx.provider.name} {ctx.store.url}".encode()).hexdigest()[:16]
    stamp = ctx.settings.state_home() / "reaped" / key
    interval = ctx.settings.get_float("RK_REAP_INTERVAL", 300)
    try:
        if not force and time.time() - stamp.stat().st_mtime < interval:
            return []
    except OSError:
        pass
    names = reap(ctx)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return names


def reap(ctx: Context, dry_run: bool = False) -> list[str]:
    """Delete this tool's instances that are past their deadline or already dead (one list call)."""
    doomed = []
    at = runs.now()
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
