"""Helpers experiment.sh calls: everything that parses or renders, kept out of bash.

  python -m researchkit_py.kit <command> [args]   (not a user-facing CLI; see experiment.sh)
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from . import research
from .errors import KitError, UsageError, run_cli
from .locks import lock, unlock
from .prompts import check_target, compute_directive, render
from .spec import load_spec


def _root() -> Path:
    return Path.cwd()


def _results_root() -> Path:
    return Path(os.environ.get("RESULTS_ROOT", "results"))


def cmd_spec_env(spec_path: str) -> int:
    """Shell assignments for experiment.sh (every value shlex-quoted, so eval is safe)."""
    spec = load_spec(spec_path)
    results = _results_root() / spec.id
    est = spec.estimated_hours
    budget = os.environ.get("EXP_TIME_BUDGET") or (str(max(600, int(est * 3600 * 2))) if est else "")
    values = {"SPEC_ID": spec.id, "SPEC_TITLE": spec.title, "RESULTS_PATH": str(results), "RUN_BUDGET_SECONDS": budget}
    for k, v in values.items():
        print(f"{k}={shlex.quote(v)}")
    return 0


def cmd_validate(spec_path: str) -> int:
    problems = load_spec(spec_path).problems()
    if problems:
        raise KitError(f"{spec_path} is missing: {'; '.join(problems)} (see templates/experiment-spec.md)")
    return 0


def cmd_prompt(phase: str, *rest: str) -> int:
    opts = dict(zip(rest[::2], rest[1::2], strict=False))
    spec_path = opts.get("--spec", "")
    values = {k.lstrip("-").replace("-", "_"): v for k, v in opts.items()}
    if spec_path:
        spec = load_spec(spec_path) if Path(spec_path).exists() else None
        values.setdefault("spec_id", Path(spec_path).stem)
        values.setdefault("results_dir", str(_results_root() / Path(spec_path).stem))
    if values.get("pi_directive"):
        values["pi_directive"] = f"PI directive (takes precedence): {values['pi_directive']}"
    if phase == "run":
        target = check_target(os.environ.get("COMPUTE_TARGET", "local") or "local")
        data_dir = os.environ.get("DATA_DIR", "data")
        directive = compute_directive(
            target, okit=os.environ.get("ORCHESTRATION_KIT_ROOT", "orchestration-kit"), spec=spec_path,
            results=values["results_dir"], command=spec.run_command if spec else "",
            data_dir=data_dir if Path(data_dir).is_dir() else None,
            max_hours=os.environ.get("MAX_GPU_HOURS") or (spec.budget.get("max_gpu_hours") if spec else None) or "4",
        )
        values["compute_advisory"] = directive or values.get("advisory", "")
    sys.stdout.write(render(phase, values))
    return 0


def cmd_verdict(results: str) -> int:
    print(research.read_verdict(Path(results)) or "")
    return 0


def cmd_lock(record: str, mode: str, *paths: str) -> int:
    lock(Path(record), [Path(p) for p in paths], exact_mode=int(mode, 8) if mode != "-" else None)
    return 0


def cmd_unlock(record: str) -> int:
    unlock(Path(record))
    return 0


def cmd_abort_metrics(results: str, reason: str) -> int:
    path = Path(results) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # never lose what the run did measure
        path.replace(path.with_name("metrics.partial.json"))
    path.write_text(json.dumps({"aborted": True, "reason": reason, "at": research.today()}, indent=2) + "\n")
    return 0


def cmd_summary(log: str) -> int:
    from .streamlog import summary

    print(summary(Path(log)))
    return 0


def cmd_watch(log_dir: str, phase: str = "") -> int:
    from .streamlog import follow

    d = Path(log_dir)
    logs = sorted(d.glob("*.log"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
    if phase:
        logs = [p for p in logs if p.stem == phase]
    if not logs:
        raise KitError(f"no {phase + ' ' if phase else ''}phase log in {d}; run a phase first")
    follow(logs[-1], keep_following=os.environ.get("EXP_WATCH_FOLLOW", "1") != "0")
    return 0


def cmd_next_question(*skip: str) -> int:
    q = next((q for q in research.read_questions(Path("QUESTIONS.md"))
              if not q.done and (q.spec or q.text) not in skip), None)
    if q:
        print(f"QUESTION={shlex.quote(q.text)}\nQUESTION_SPEC={shlex.quote(q.spec or '')}")
    return 0


def cmd_record_cycle(state_file: str, question: str, spec: str, verdict: str, exit_code: str, seconds: str) -> int:
    path = Path(state_file)
    state = research.load_state(path)
    state["cycles"].append({"question": question, "spec": spec, "verdict": verdict, "exit_code": int(exit_code),
                            "seconds": int(seconds), "ended_at": research.today()})
    research.save_state(path, state)
    if verdict in ("CONFIRMED", "REFUTED", "INCONCLUSIVE"):
        research.mark_question(Path("QUESTIONS.md"), spec, verdict)
    return 0


def cmd_handoff(action: str, path: str = "HANDOFF.md") -> int:
    p = Path(path)
    if action == "validate":
        problems = research.handoff_problems(p)
        if problems:
            raise KitError(f"{path} is missing: {', '.join(problems)} (see templates/handoff.md)")
        print(f"{path} is valid ({'pending' if research.handoff_pending(p) else 'complete'})")
    elif action == "complete":
        print(f"handoff completed; archived as {research.complete_handoff(p)}")
    elif action == "pending":
        return 0 if research.handoff_pending(p) else 1
    return 0


def cmd_env_file(path: str) -> int:
    """`export K=V` for the env file's settings the environment does not already set."""
    from .config import parse_env_file

    for key, value in parse_env_file(Path(path)).items():
        if key not in os.environ:
            print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_guard_settings(hook: str) -> int:
    """Claude Code --settings JSON registering the PreToolUse guard."""
    matcher = "Edit|MultiEdit|Write|NotebookEdit|Bash"
    hooks = {"PreToolUse": [{"matcher": matcher, "hooks": [{"type": "command", "command": shlex.quote(hook)}]}]}
    print(json.dumps({"hooks": hooks}))
    return 0


def cmd_other_results(current: str, *exclude: str) -> int:
    """Results directories of other experiments: what RUN locks."""
    root = _results_root()
    skip = {current, *exclude}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and d.name not in skip:
            print(d)
    return 0


def cmd_status(state_file: str) -> int:
    root = _root()
    rows = research.experiments(root, _results_root())
    print(f"compute target: {os.environ.get('COMPUTE_TARGET', 'local')}   agent: {os.environ.get('EXP_AGENT') or '-'}")
    print("experiments:" if rows else "experiments: none yet (copy templates/experiment-spec.md into experiments/)")
    for r in rows:
        print(f"  {r['id']:<40} {r['verdict']}")
    qs = research.read_questions(root / "QUESTIONS.md")
    print(f"questions: {sum(not q.done for q in qs)} open, {sum(q.done for q in qs)} answered")
    state = research.load_state(Path(state_file))
    if state["cycles"]:
        last = state["cycles"][-1]
        print(f"program: {len(state['cycles'])} cycles; last: {last['spec']} → {last['verdict']}")
    print(f"handoff: {'PENDING (HANDOFF.md)' if research.handoff_pending(root / 'HANDOFF.md') else 'none'}")
    return 0


COMMANDS = {name[4:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("cmd_")}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        raise UsageError(f"kit: expected one of {', '.join(sorted(COMMANDS))}")
    try:
        return COMMANDS[argv[0]](*argv[1:])
    except TypeError as e:
        raise UsageError(f"kit {argv[0]}: {e}") from None


if __name__ == "__main__":
    run_cli("experiment.sh", main)
