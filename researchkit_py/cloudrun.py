"""tools/cloud-run: run a command on a VM that cleans up after itself, and get its results back.
(`cloud-run --help` and `cloud-run COMMAND --help` are the reference.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argv import ArgumentParser
from .errors import KitError, ProviderError, emit_json, run_cli, say
from .settings import Settings

DEFAULT_LIMIT = 50  # runs `ls` shows: a screenful; --limit 0 for all


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="cloud-run", description=__doc__.split("\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    backend_help = "local (embedded), gce or ec2; default from COMPUTE_TARGET / RK_BACKEND"
    p.add_argument("--backend", help=backend_help)
    # accepted after the subcommand too; SUPPRESS keeps a value given before it
    common = ArgumentParser(add_help=False)
    common.add_argument("--backend", default=argparse.SUPPRESS, help=backend_help)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="launch a command on a fresh VM; wait and pull unless --detach")
    r.add_argument("command", nargs="?", default="",
                   help="shell command (single-quoted), run in the unpacked project; write outputs to $RESULTS_DIR "
                        "(default: the spec's `## Run` command)")
    r.add_argument("--spec", default="", help="experiment spec this run belongs to (names the run; gives the command)")
    r.add_argument("--data-dirs", default="", help="comma-separated directories to ship beside the code")
    r.add_argument("--output-dir", help="where results are pulled (attached mode)")
    r.add_argument("--max-hours", type=float, help="hard deadline; the VM is deleted by then whatever happens")
    r.add_argument("--detach", action="store_true", help="return after launch; use status/logs/pull later")
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="environment for the command")
    r.add_argument("--machine-type", default="", help="instance type (default: what --gpu or the --spec's compute "
                   "profile asks for, else the provider's default)")
    r.add_argument("--gpu", metavar="TYPE[:COUNT]", help="GPUs, e.g. L4 or A100:8; `none` for none (default: the "
                   "--spec's gpu_type and gpu_count)")
    r.add_argument("--spot", action="store_true", help="use spot/preemptible capacity where supported")
    r.add_argument("--max-cost", type=float, metavar="USD", help="refuse if price × --max-hours would exceed this")
    r.add_argument("--dry-run", action="store_true", help="print the startup script; create nothing")
    r.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    r.add_argument("--quiet", action="store_true", help="do not echo the remote log while waiting")

    pl = sub.add_parser("pull", parents=[common], help="download a run's results (incremental, verified)")
    pl.add_argument("run_id")
    pl.add_argument("--output-dir", help="default: results/<run-id>")
    pl.add_argument("--verify", action="store_true", help="re-read the bucket and re-hash every local file")
    pl.add_argument("--wait", action="store_true", help="wait for a run still going to end (a line of progress "
                    "each minute; at most until its deadline), then pull")
    pl.add_argument("--json", action="store_true")

    st = sub.add_parser("status", parents=[common], help="one run's state, or all runs'")
    st.add_argument("run_id", nargs="?")
    st.add_argument("--json", action="store_true")
    st.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
                    help=f"without RUN_ID: the newest N runs (default {DEFAULT_LIMIT}; 0: all)")

    ls = sub.add_parser("ls", parents=[common], help="list runs in the bucket, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
                    help=f"the newest N runs (default {DEFAULT_LIMIT}; 0: all)")

    lg = sub.add_parser("logs", parents=[common], help="print a run's log")
    lg.add_argument("run_id")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")

    t = sub.add_parser("terminate", parents=[common], help="delete a run's VM now")
    t.add_argument("run_id")
    t.add_argument("--json", action="store_true")

    rp = sub.add_parser("reap", parents=[common], help="delete instances past their deadline or dead")
    rp.add_argument("--dry-run", action="store_true")
    rp.add_argument("--json", action="store_true")
    return p


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs (0 lists them all)")
    return n


def _table(rows: list[dict], cols: list[str]) -> None:
    if not rows:
        print("(no runs)", file=sys.stderr)
        return
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value) -> str:
    """One table cell: one line (a command of several shows its first, with an ellipsis)."""
    if value is None:
        return "-"
    lines = str(value).strip().splitlines() or [""]
    return lines[0] + (" …" if len(lines) > 1 else "")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.cmd:
        _parser().print_help(sys.stderr)
        return 2
    settings = Settings()
    if args.cmd == "pull" and (done := _unchanged_pull(settings, args)):
        return _pulled(args, done[0], 0, 0, len(done[1]["files"]), True)
    from .lifecycle import Context, reap_if_due

    ctx = Context.open(settings, args.backend)
    if args.cmd != "reap" and not getattr(args, "dry_run", False):
        try:
            for name in reap_if_due(ctx, force=args.cmd == "run"):
                say(f"cloud-run: reaped {name} (past its deadline or dead)")
        except ProviderError as e:  # the API refused: say so, and go on (credentials missing is an error)
            say(f"cloud-run: warning: could not check for expired instances: {e}")
    return COMMANDS[args.cmd](ctx, args)


def _unchanged_pull(settings: Settings, args) -> tuple[Path, dict] | None:
    """A re-pull with nothing to do, answered before the provider, the bucket and the lifecycle
    are opened (repull.py says when that is safe): (the output directory, the pull's record)."""
    if args.verify:
        return None
    from .repull import unchanged

    try:
        out = Path(args.output_dir or f"results/{_run_id(args.run_id)}")
    except KitError:  # the whole way says it, in its order
        return None
    state = unchanged(settings, args.run_id, out, args.backend)
    return (out, state) if state else None


def _run_id(text: str) -> str:
    # imported here: the protocol (and its dataclasses) is a fifth of an unchanged re-pull's time
    from .protocol import check_run_id

    return check_run_id(text)


def cmd_run(ctx, args) -> int:
    from .cloudrun_run import cmd_run as run

    return run(ctx, args)


def _pulled(args, out: Path, files: int, size: int, unchanged: int, complete: bool) -> int:
    if args.json:
        emit_json({"run_id": args.run_id, "output_dir": str(out), "files": files, "bytes": size,
                   "unchanged": unchanged, "complete": complete})
    else:
        say(f"cloud-run: pulled {files} files ({size} bytes), {unchanged} unchanged, into {out}")
    return 0


def cmd_pull(ctx, args) -> int:
    from .lifecycle import pull, run_state, wait_quietly

    out = Path(args.output_dir or f"results/{_run_id(args.run_id)}")
    if args.wait:
        wait_quietly(ctx, args.run_id)
    stats, complete = pull(ctx, args.run_id, out, verify=args.verify, make_parents=not args.output_dir)
    _pulled(args, out, stats.files, stats.bytes, stats.skipped, complete)
    if not complete:
        state = run_state(ctx, args.run_id)
        raise KitError(f"run {args.run_id} has no results manifest (it is {state.get('phase')}); "
                       f"what it uploaded is in {out}; `cloud-run logs {args.run_id}` shows why")
    return 0


def cmd_status(ctx, args) -> int:
    from .lifecycle import run_state

    if not args.run_id:
        return cmd_ls(ctx, args)
    state = run_state(ctx, _run_id(args.run_id))
    if args.json:
        emit_json(state)
    else:
        print(f"{args.run_id}  {state.get('phase')}  cause={state.get('cause') or '-'}  "
              f"exit={state.get('exit_code') if state.get('exit_code') is not None else '-'}"
              + (f"  ({state['message']})" if state.get("message") else ""))
    return 0


def cmd_ls(ctx, args) -> int:
    from .lifecycle import list_runs

    limit = args.limit or None
    rows = list_runs(ctx, limit=limit)
    if args.json:
        emit_json(rows)
    else:
        _table(rows, ["run_id", "provider", "phase", "exit_code", "cause", "created_at", "command"])
        if limit and len(rows) == limit:
            say(f"(the newest {limit} runs; --limit 0 lists them all)")
    return 0


def cmd_logs(ctx, args) -> int:
    from .lifecycle import read_log, read_manifest, wait

    read_manifest(ctx, _run_id(args.run_id))
    if args.follow:
        wait(ctx, args.run_id, stream_log=True)
        return 0
    sys.stdout.write(read_log(ctx, args.run_id).decode("utf-8", "replace"))
    return 0


def cmd_terminate(ctx, args) -> int:
    from .lifecycle import terminate

    status = terminate(ctx, _run_id(args.run_id))
    if args.json:
        emit_json(status)
    else:
        say(f"cloud-run: {args.run_id} terminated; it is {status.get('phase')} ({status.get('cause')})")
    return 0


def cmd_reap(ctx, args) -> int:
    from .lifecycle import reap

    names = reap(ctx, dry_run=args.dry_run)
    if args.json:
        emit_json({"dry_run": args.dry_run, "instances": names})
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print("\n".join(f"{verb} {n}" for n in names) if names else "nothing to reap")
    return 0


COMMANDS = {"run": cmd_run, "pull": cmd_pull, "status": cmd_status, "ls": cmd_ls, "logs": cmd_logs,
            "terminate": cmd_terminate, "reap": cmd_reap}


def entry() -> None:
    run_cli("cloud-run", main)


if __name__ == "__main__":
    entry()
