"""Fire-and-forget experiments on GCE: launch, and check on them later from the bucket.
(`python -m researchkit_py.detached --help` and `… list --help` are the reference.)

Each experiment gets its own VM (`rk-expN-<time>-<random>`), which runs it, uploads results
and logs to gs://<bucket>/runs/<run-id>/ and deletes itself. What runs for experiment N:
--command, else the run command of experiments/exp-00N-*.md, else RK_DETACHED_COMMAND
(default `python scripts/run_experiment.py --exp {exp} {quick} --parallel`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .argv import ArgumentParser
from .errors import KitError, ProviderError, run_cli, say
from .settings import Settings

DEFAULT_SCRIPT = "scripts/run_experiment.py"
DEFAULT_COMMAND = f"python {DEFAULT_SCRIPT} --exp {{exp}} {{quick}} --parallel"
LATER = ("list", "status", "download", "logs", "kill")
DEFAULT_LIMIT = 50  # runs `list` shows: a screenful; --limit 0 for all


def spec_for(exp: int, settings: Settings) -> Path | None:
    """experiments/exp-00N-*.md: its run command and compute profile are experiment N's."""
    specs = sorted(Path(settings.root, "experiments").glob(f"exp-{exp:03d}-*.md"))
    return specs[0] if specs else None


def command_for(exp: int, quick: bool, explicit: str, settings: Settings) -> tuple[str, str]:
    """(command, where it came from) for experiment `exp`."""
    if explicit:
        return explicit, "--command"
    spec = spec_for(exp, settings)
    if spec:
        from .experiment.spec import load_spec

        run_command = load_spec(spec).run_command
        if run_command:
            return run_command, str(spec.relative_to(settings.root))
    template = settings.get("RK_DETACHED_COMMAND") or DEFAULT_COMMAND
    source = "RK_DETACHED_COMMAND" if settings.get("RK_DETACHED_COMMAND") else "the default"
    if template == DEFAULT_COMMAND and not Path(settings.root, DEFAULT_SCRIPT).is_file():
        raise KitError(f"experiment {exp} has no command: no experiments/exp-{exp:03d}-*.md with a `## Run` command, "
                       f"no RK_DETACHED_COMMAND, no {DEFAULT_SCRIPT}; pass --command \"...\"")
    try:
        return " ".join(template.format(exp=exp, quick="--quick" if quick else "").split()), source
    except (KeyError, IndexError, ValueError):
        raise KitError(f"RK_DETACHED_COMMAND={template!r}: only {{exp}} and {{quick}} may appear in braces") from None


def _context(args, *, launching: bool = False):
    """The GCE context; the reaper layer runs first, as for every invocation (see reap_if_due)."""
    from .lifecycle import Context, reap_if_due

    settings = Settings().with_flags(GCE_PROJECT=args.project, GCE_ZONE=args.zone,
                                     GCE_MACHINE_TYPE=getattr(args, "machine_type", None))
    ctx = Context.open(settings, "gce")
    if not getattr(args, "dry_run", False):
        try:
            for name in reap_if_due(ctx, force=launching):
                say(f"reaped {name} (past its deadline or dead)")
        except ProviderError as e:  # the API refused: say so, and go on (credentials missing is an error)
            if launching:
                raise
            say(f"warning: could not check for expired instances: {e}")
    return ctx


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs (0 lists them all)")
    return int(text)


def launch_parser() -> argparse.ArgumentParser:
    later = later_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    commands = "\n".join(f"  {a.dest:<10} {a.help}" for a in later._choices_actions)
    p = ArgumentParser(prog="python -m researchkit_py.detached", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"later (python -m researchkit_py.detached COMMAND --help):\n{commands}")
    p.add_argument("--exp", type=int, nargs="+", required=True, metavar="N", help="experiment number(s): one VM each")
    p.add_argument("--quick", action="store_true", help="pass --quick to the experiment")
    p.add_argument("--command", default="", help="what to run instead (same for every --exp)")
    p.add_argument("--project", help="GCP project (default: GCE_PROJECT, then gcloud's core/project)")
    p.add_argument("--zone", help="zone (default: GCE_ZONE, us-central1-a); GCE_ZONES adds fallbacks")
    p.add_argument("--machine-type", help="default: what --gpu or the experiment's spec asks for, else "
                   "GCE_MACHINE_TYPE, n2-standard-4")
    p.add_argument("--gpu", metavar="TYPE[:COUNT]", help="GPUs, e.g. L4 or A100:8; `none` for none (default: the "
                   "spec's gpu_type and gpu_count)")
    p.add_argument("--max-hours", type=float, help="the VM is deleted by then whatever happens (default MAX_GPU_HOURS)")
    p.add_argument("--spot", action="store_true", help="spot capacity (cheaper, may be preempted)")
    p.add_argument("--dry-run", action="store_true", help="print the startup script and instance request; create nothing")
    return p


def later_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m researchkit_py.detached")
    p.add_argument("--project")
    p.add_argument("--zone")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("list", "status"):
        s = sub.add_parser(name, help="runs per experiment, newest first, with their state (from the bucket)")
        s.add_argument("--exp", type=int)
        s.add_argument("--json", action="store_true")
        s.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
                       help=f"the newest N runs (default {DEFAULT_LIMIT}; 0: all)")
    d = sub.add_parser("download", help="download a run's results (latest of EXP by default)")
    d.add_argument("exp", type=int)
    d.add_argument("run", nargs="?")
    d.add_argument("--output-dir")
    lg = sub.add_parser("logs", help="print a run's log (latest of EXP by default)")
    lg.add_argument("exp", type=int)
    lg.add_argument("run", nargs="?")
    lg.add_argument("--follow", "-f", action="store_true")
    k = sub.add_parser("kill", help="delete the VM of a run, or of every live run of an experiment")
    k.add_argument("target")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] in LATER:
        args = later_parser().parse_args(argv)
        return LATER_COMMANDS[args.cmd](args)
    if not argv:
        launch_parser().print_help(sys.stderr)
        return 2
    return launch(launch_parser().parse_args(argv))


def launch(args) -> int:
    from . import lifecycle
    from .clouds.registry import deadline_hours
    from .lifecycle.many import launch_many
    from .machine import choose

    ctx = _context(args, launching=True)
    max_hours = deadline_hours(ctx.settings.with_flags(MAX_GPU_HOURS=None if args.max_hours is None else f"{args.max_hours:g}"))
    planned = []  # every experiment's command and machine before anything is launched: a bad one stops them all
    for exp in args.exp:
        command, source = command_for(exp, args.quick, args.command, ctx.settings)
        machine = choose("gce", ctx.settings, machine_type=args.machine_type or "", gpu=args.gpu,
                         spec=spec_for(exp, ctx.settings) or "")
        opts = lifecycle.LaunchOptions(command=command, max_hours=max_hours, spot=args.spot, experiment=f"exp{exp}",
                                       label=f"exp{exp}", machine=machine, detached=True)
        planned.append((exp, command, source, opts))
    if args.dry_run:
        for exp, command, source, opts in planned:
            plan = lifecycle.plan_launch(ctx, opts, upload=False)
            print(plan.script)
            say(f"dry run, experiment {exp} ({shlex.quote(command)} from {source}): would insert\n"
                f"{lifecycle.dry_run_report(ctx, plan)}\nnothing was created")
        return 0
    launched, failed = [], 0
    outcomes = launch_many(ctx, [p[3] for p in planned])
    if len(outcomes) == 1 and outcomes[0].error is not None:
        raise outcomes[0].error  # one experiment: its error is the one line
    for (exp, command, source, _), outcome in zip(planned, outcomes, strict=True):
        if outcome.error is not None:
            failed += 1
            say(f"Experiment {exp} was not launched: {outcome.error} (run {outcome.plan.run_id}: its record says so)")
            continue
        plan = outcome.plan
        launched.append(exp)
        print(plan.run_id)
        say(f"Experiment {exp} launched: VM {plan.manifest.instance} in {plan.manifest.zone or ctx.provider.zones[0]} "
            f"runs {shlex.quote(command)} ({source})")
    if launched:
        bucket = ctx.store.url
        many = len(launched) > 1
        say(
            f"\n{'Each VM' if many else 'The VM'} will install what it needs, run, upload results and logs to "
            f"{bucket}/runs/<run-id>/, and delete itself (deadline: {max_hours:g} h).\nYou can close this terminal.\n\n"
            "To check progress:\n"
            "  python -m researchkit_py.detached list\n"
            + "".join(f"  python -m researchkit_py.detached logs {e} --follow\n" for e in launched)
            + "Later:\n"
            + "".join(f"  python -m researchkit_py.detached download {e}\n" for e in launched))
    if failed:
        raise KitError(f"{failed} of {len(planned)} experiments were not launched (above: why); "
                       f"{len(launched)} run{'s' if len(launched) != 1 else ''} launched")
    return 0


def _runs(ctx, exp: int | None, limit: int | None = None) -> list[dict]:
    """Runs of experiment `exp` (of all when None), newest first."""
    from .lifecycle import list_runs

    return list_runs(ctx, experiment=f"exp{exp}" if exp is not None else None, limit=limit)


def _pick(ctx, exp: int, run: str | None) -> str:
    if run:
        from . import protocol

        manifest = ctx.store.read_json_or_none(protocol.run_key(protocol.check_run_id(run), protocol.MANIFEST))
        if not isinstance(manifest, dict) or manifest.get("experiment") != f"exp{exp}":
            raise KitError(f"no run {run} of experiment {exp}; `list --exp {exp}` shows its runs")
        return run
    rows = _runs(ctx, exp, limit=1)
    if not rows:
        raise KitError(f"no runs of experiment {exp} in {ctx.store.url}; launch one with --exp {exp}")
    return rows[0]["run_id"]


def cmd_list(args) -> int:
    ctx = _context(args)
    limit = args.limit or None
    rows = _runs(ctx, args.exp, limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs in {ctx.store.url}", file=sys.stderr)
        return 0
    print(f"{'EXP':<6}{'RUN':<34}{'STATE':<8}{'EXIT':<6}{'CAUSE':<12}{'ZONE':<16}CREATED")
    for r in rows:
        exit_code = "-" if r["exit_code"] is None else r["exit_code"]
        print(f"{r['experiment']:<6}{r['run_id']:<34}{r['phase']:<8}{exit_code!s:<6}{r['cause'] or '-':<12}"
              f"{r['zone'] or '-':<16}{r['created_at']}")
    if limit and len(rows) == limit:
        say(f"(the newest {limit} runs; --limit 0 lists them all)")
    return 0


def cmd_download(args) -> int:
    from .lifecycle import check_output_dir, pull

    if args.output_dir:  # a path that cannot be a directory is refused before the bucket is asked
        check_output_dir(Path(args.output_dir), make_parents=True)
    ctx = _context(args)
    run_id = _pick(ctx, args.exp, args.run)
    out = Path(args.output_dir or f"results/exp{args.exp}/{run_id}")
    stats, complete = pull(ctx, run_id, out, make_parents=True)
    say(f"Results of {run_id} in {out}: {stats.files} files downloaded ({stats.bytes} bytes), {stats.skipped} unchanged"
        + ("" if complete else " — the run uploaded no results manifest; these may be incomplete"))
    return 0 if complete else 1


def cmd_logs(args) -> int:
    from .lifecycle import read_log, wait

    ctx = _context(args)
    run_id = _pick(ctx, args.exp, args.run)
    if args.follow:
        wait(ctx, run_id, stream_log=True)
    else:
        sys.stdout.write(read_log(ctx, run_id).decode("utf-8", "replace"))
    return 0


def cmd_kill(args) -> int:
    from .lifecycle import terminate

    ctx = _context(args)
    if args.target.isdigit():
        targets = [r["run_id"] for r in _runs(ctx, int(args.target)) if r["phase"] not in ("DONE", "FAILED")]
        if not targets:
            raise KitError(f"experiment {args.target} has no live runs")
    else:
        targets = [args.target]
    for run_id in targets:
        status = terminate(ctx, run_id)
        say(f"{run_id}: VM deleted; the run is {status.get('phase')} ({status.get('cause')})")
    return 0


LATER_COMMANDS = {"list": cmd_list, "status": cmd_list, "download": cmd_download, "logs": cmd_logs, "kill": cmd_kill}


if __name__ == "__main__":
    run_cli("detached", main)
