"""The Python half of experiment.sh: everything that parses, renders or checks, kept out of bash.

  python -m researchkit_py.experiment.cli COMMAND ...   (called by experiment.sh, not by users)

A phase costs two Python starts, `begin` and `end` (phases.py). The other commands serve
status, watch, handoffs and the program loop.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..argv import ArgumentParser
from ..errors import KitError, run_cli
from ..settings import Settings
from . import records, runrecord
from .locks import unlock
from .phases import cmd_begin, cmd_end
from .prompts import PHASES


def cmd_unlock(args, settings: Settings) -> str:
    for record in args.records:
        unlock(Path(record))
    return ""


def cmd_watch(args, settings: Settings) -> str:
    from .streamlog import follow

    d = Path(settings.text("EXP_LOG_DIR", f"{settings['KIT_STATE_DIR']}/logs"))
    logs = sorted(d.glob("*.log"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
    if args.phase:
        logs = [p for p in logs if p.stem == args.phase]
    if not logs:
        raise KitError(f"no {args.phase + ' ' if args.phase else ''}phase log in {d}; run a phase first")
    follow(logs[-1], keep_following=settings["EXP_WATCH_FOLLOW"] != "0")
    return ""


def _state_file(settings: Settings) -> Path:
    return Path(settings["KIT_STATE_DIR"]) / "program-state.json"


def cmd_next_question(args, settings: Settings) -> str:
    q = next((q for q in records.read_questions(Path("QUESTIONS.md"))
              if not q.done and (q.spec or q.text) not in args.skip), None)
    return f"QUESTION={shlex.quote(q.text)}\nQUESTION_SPEC={shlex.quote(q.spec or '')}\n" if q else ""


def cmd_record_cycle(args, settings: Settings) -> str:
    """Record a cycle of `program`; print its verdict."""
    results = Path(settings["RESULTS_ROOT"]) / Path(args.spec).stem
    verdict = (records.read_verdict(results) or "NO VERDICT") if args.exit_code == 0 else "FAILED"
    path = _state_file(settings)
    state = records.load_state(path)
    state["cycles"].append({"question": args.question, "spec": args.spec, "verdict": verdict,
                            "exit_code": args.exit_code, "seconds": args.seconds, "ended_at": records.today()})
    records.save_state(path, state)
    if verdict in ("CONFIRMED", "REFUTED", "INCONCLUSIVE"):
        records.mark_question(Path("QUESTIONS.md"), args.spec, verdict)
    return verdict + "\n"


def cmd_record_run(args, settings: Settings) -> str:
    """After sync_results pulled: the RUN record follows what the pull brought."""
    results = Path(args.results)
    if runrecord.refresh(results) is None:
        return ""
    why = runrecord.problem(results)
    return f"  {runrecord.provenance(results)}" + (f"\n  READ will say INCONCLUSIVE: {why}" if why else "") + "\n"


def cmd_handoff(args, settings: Settings) -> str:
    p = Path("HANDOFF.md")
    if args.action == "validate":
        problems = records.handoff_problems(p)
        if problems:
            raise KitError(f"HANDOFF.md is missing: {', '.join(problems)} (see templates/handoff.md)")
        return f"HANDOFF.md is valid ({'pending' if records.handoff_pending(p) else 'complete'})\n"
    if args.action == "complete":
        return f"handoff completed; archived as {records.complete_handoff(p)}\n"
    if not records.handoff_pending(p):  # pending: the exit code says it
        raise SystemExit(1)
    return ""


def cmd_status(args, settings: Settings) -> str:
    root, results_root = settings.root, Path(settings["RESULTS_ROOT"])
    rows = records.experiments(root, results_root)
    lines = [f"compute target: {settings['COMPUTE_TARGET']}   agent: {settings.text('EXP_AGENT', '-')}",
             "experiments:" if rows else "experiments: none yet (copy templates/experiment-spec.md into experiments/)"]
    lines += [f"  {r['id']:<40} {r['verdict']}" for r in rows]
    qs = records.read_questions(root / "QUESTIONS.md")
    lines.append(f"questions: {sum(not q.done for q in qs)} open, {sum(q.done for q in qs)} answered")
    state = records.load_state(_state_file(settings))
    if state["cycles"]:
        last = state["cycles"][-1]
        lines.append(f"program: {len(state['cycles'])} cycles; last: {last['spec']} → {last['verdict']}")
    lines.append(f"handoff: {'PENDING (HANDOFF.md)' if records.handoff_pending(root / 'HANDOFF.md') else 'none'}")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="experiment.sh (python half)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("begin")
    b.add_argument("phase", choices=[*PHASES, "batch", "program"])
    b.add_argument("specs", nargs="*")
    b.add_argument("--spec", default="")
    b.add_argument("--question", default="")
    b.add_argument("--pi-directive", default="")
    b.add_argument("--reason", default="")
    b.add_argument("--dry-run", action="store_true")
    e = sub.add_parser("end")
    e.add_argument("phase", choices=PHASES)
    e.add_argument("--rc", type=int, required=True)
    e.add_argument("--log", required=True)
    e.add_argument("--lock-record", default="")
    e.add_argument("--spec", default="")
    e.add_argument("--spec-id", default="")
    e.add_argument("--results", default="")
    e.add_argument("--budget", default="")
    u = sub.add_parser("unlock")
    u.add_argument("records", nargs="*")
    w = sub.add_parser("watch")
    w.add_argument("phase", nargs="?", default="")
    n = sub.add_parser("next-question")
    n.add_argument("skip", nargs="*")
    r = sub.add_parser("record-cycle")
    r.add_argument("question")
    r.add_argument("spec")
    r.add_argument("exit_code", type=int)
    r.add_argument("seconds", type=int)
    rr = sub.add_parser("record-run")
    rr.add_argument("results")
    h = sub.add_parser("handoff")
    h.add_argument("action", choices=["validate", "complete", "pending"])
    sub.add_parser("status")
    return p


COMMANDS = {"begin": cmd_begin, "end": cmd_end, "unlock": cmd_unlock, "watch": cmd_watch,
            "next-question": cmd_next_question, "record-cycle": cmd_record_cycle, "record-run": cmd_record_run,
            "handoff": cmd_handoff,
            "status": cmd_status}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    sys.stdout.write(COMMANDS[args.cmd](args, Settings()))
    return 0


if __name__ == "__main__":
    run_cli("experiment.sh", main)
