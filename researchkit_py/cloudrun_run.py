"""`cloud-run run`: launch a command on a fresh VM; attached, wait for it, pull its results and
exit with its exit code (tools/cloud-run, see cloudrun.py for the other commands)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from . import protocol
from .errors import KitError, emit_json, say


def _flag(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"


def cmd_run(ctx, args) -> int:
    from .lifecycle.cancel import signals_restored

    with signals_restored():
        return _run(ctx, args)


def _run(ctx, args) -> int:
    from .clouds.registry import deadline_hours
    from .experiment.spec import spec_command
    from .lifecycle import LaunchOptions, check_output_dir, dry_run_report, launch, plan_launch
    from .lifecycle.cancel import Interrupted, forgive_closed_output, raise_on_signals
    from .machine import choose
    from .startup import parse_env_pairs

    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None:
        check_output_dir(output_dir)
    command = args.command or spec_command(args.spec)
    shown = f"cloud-run: command{'' if args.command else f' (the `## Run` block of {args.spec})'}: {shlex.quote(command)}"
    opts = LaunchOptions(
        command=command, spec=args.spec,
        data_dirs=[d for d in args.data_dirs.split(",") if d.strip()],
        max_hours=deadline_hours(ctx.settings.with_flags(MAX_GPU_HOURS=_flag(args.max_hours))),
        env=parse_env_pairs(args.env), spot=args.spot,
        machine=choose(ctx.provider.name, ctx.settings, machine_type=args.machine_type, gpu=args.gpu, spec=args.spec),
        experiment=Path(args.spec).stem if args.spec else "", detached=args.detach, max_cost=args.max_cost,
    )
    if args.dry_run:
        plan = plan_launch(ctx, opts, upload=False)
        say(shown)
        req = plan.request
        say(f"cloud-run: dry run — would create {req.name} on {ctx.provider.name} with labels {req.labels}, "
            f"deadline {req.max_seconds} s, bucket {ctx.store.url}; nothing was created\n{dry_run_report(ctx, plan)}")
        sys.stdout.write(plan.script)
        return 0
    # Attached, the run lives and dies with this process: INT, TERM and HUP stop it (--detach
    # is how a run outlives its caller; until the instance exists, they cancel that launch too).
    raise_on_signals()
    started: list[str] = []

    def recorded(run_id: str) -> None:  # the run exists: its id, at once, where a later pull finds it
        started.append(run_id)
        say(f"cloud-run: run {run_id}")
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / ".cloud-run-id").write_text(run_id + "\n")

    try:
        plan = launch(ctx, opts, on_run_id=recorded)
        say(shown)  # once it is valid: an error stays one line
        return _after_launch(ctx, args, plan, output_dir)
    except Interrupted as e:
        forgive_closed_output()
        run_id = getattr(e, "run_id", None)  # launch.launch stopped the launch: CANCELLED, nothing left
        if run_id or not started:
            if run_id and not started:
                recorded(run_id)
            say(f"cloud-run: interrupted ({e}) while launching; " + (
                f"{run_id} is CANCELLED, no instance is left" if run_id else "nothing was created"))
            return e.exit_code
        if args.detach:  # launched: a detached run goes on whatever happens to its caller
            say(f"cloud-run: interrupted ({e}); {started[0]} goes on (detached)")
            return e.exit_code
        return _stop(ctx, args, started[0], output_dir, e)  # the instance exists (launch returned)


def _stop(ctx, args, run_id: str, output_dir: Path | None, signal) -> int:
    """The caller was interrupted (`signal`, a lifecycle.cancel.Interrupted): the run stops, what
    it kept is pulled, and the exit code says which signal."""
    from .lifecycle import pull
    from .lifecycle.cancel import Interrupted, cancel, raise_on_signals

    say(f"\ncloud-run: interrupted ({signal})")
    status = cancel(ctx, run_id, protocol.instance_name(run_id), f"{signal} to cloud-run")
    try:
        kept = _kept(ctx, run_id)
    except KitError as e:
        kept = f"unknown ({e})"
    raise_on_signals()  # the pull may be cut short in its turn: the run is over, a later pull finishes it
    where = f"; `cloud-run pull {run_id} --output-dir DIR` fetches them"
    if output_dir is not None:
        try:
            stats, _ = pull(ctx, run_id, output_dir)
            where = f"; pulled {stats.files} files into {output_dir}"
        except (KitError, Interrupted) as e:
            where = f"; not pulled ({e}): `cloud-run pull {run_id} --output-dir {output_dir}`"
    say(f"cloud-run: {run_id} {status.get('phase')} ({status.get('message') or status.get('cause')}); "
        f"kept: {kept}{where}")
    if args.json:
        emit_json({"run_id": run_id, "phase": status.get("phase"), "cause": status.get("cause"),
                   "exit_code": status.get("exit_code"), "cloud_run_exit": signal.exit_code})
    return signal.exit_code


def _kept(ctx, run_id: str) -> str:
    """What the bucket holds of a stopped run: its log, its results."""
    from .lifecycle import has_log

    log = has_log(ctx, run_id)
    manifest = ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.RESULTS_MANIFEST))
    files = len(manifest.get("files", [])) if manifest else len(ctx.store.list(protocol.run_key(run_id, protocol.RESULTS) + "/"))
    parts = (["the log"] if log else []) + ([f"{files} result files"] if files else [])
    return ", ".join(parts) or "nothing (the command had not started)"


def _after_launch(ctx, args, plan, output_dir: Path | None) -> int:
    from .lifecycle import ensure_gone, pull, wait

    run_id = plan.run_id
    say(f"cloud-run: launched {run_id} on {ctx.provider.name} (instance {plan.manifest.instance}, "
        f"deadline {plan.manifest.expires_at}, code {f'uploaded, {plan.code_uploaded_bytes} bytes' if plan.code_uploaded_bytes else 'unchanged'})")
    if args.detach:
        if args.json:
            emit_json({"run_id": run_id, "instance": plan.manifest.instance, "provider": ctx.provider.name,
                        "bucket": ctx.store.url, "code_uploaded_bytes": plan.code_uploaded_bytes})
        else:
            print(run_id)
            say(f"  follow:  cloud-run logs {run_id} --follow\n  state:   cloud-run status {run_id}\n"
                f"  results: cloud-run pull {run_id} --output-dir results/{run_id}\n  stop:    cloud-run terminate {run_id}")
        return 0
    if not args.json:
        print(run_id, flush=True)
    state = wait(ctx, run_id, stream_log=not args.quiet)
    code = protocol.client_exit_code(state)
    summary = {"run_id": run_id, "phase": state.get("phase"), "cause": state.get("cause"),
               "exit_code": state.get("exit_code"), "cloud_run_exit": code}
    try:  # the pull first: a final status means the results are in, while the VM deletes itself
        if output_dir is not None:
            stats, complete = pull(ctx, run_id, output_dir)
            summary.update(output_dir=str(output_dir), files=stats.files, bytes=stats.bytes, complete=complete)
    finally:
        ensure_gone(ctx, plan.manifest.instance)
    if output_dir is not None:
        say(f"cloud-run: pulled {stats.files} files ({stats.bytes} bytes) into {output_dir}"
            + ("" if complete else " — the run uploaded no results manifest: results are incomplete"))
    say(f"cloud-run: {run_id} {_outcome(state)}")
    if args.quiet and state.get("step"):  # what failed, from the log the run did not stream
        from .lifecycle import read_log

        tail = read_log(ctx, run_id).decode("utf-8", "replace").splitlines()[-10:]
        say("\n".join(["cloud-run: the log's last lines:", *(f"  {line}" for line in tail)]))
    if args.json:
        emit_json(summary)
    return code


def _outcome(state: dict) -> str:
    """`DONE (exit, exit 0)`; for a run whose setup or upload failed, what failed:
    `FAILED (boot_error: installing requirements.txt: tabulate==99 cannot be installed: …)`."""
    if state.get("step"):
        return f"{state.get('phase')} ({state.get('cause')}: {state['step']})"
    return f"{state.get('phase')} ({state.get('cause')}, exit {state.get('exit_code')})"


