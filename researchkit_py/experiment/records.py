"""The project's research records: analysis.md, RESEARCH_LOG.md, QUESTIONS.md, the program
state file, HANDOFF.md and SYNTHESIS.md."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import KitError
from ..repull import PULL_STATE
from ..storage.paths import write_json_atomic
from . import runrecord
from .criteria import evaluate, read_metrics
from .spec import Spec

VERDICT_RE = re.compile(r"^##\s*Verdict:\s*(CONFIRMED|REFUTED|INCONCLUSIVE)\b", re.M)
_QUESTION = re.compile(r"^(?P<indent>\s*)[-*]\s+\[(?P<done>[ xX])\]\s+(?P<text>.+?)"
                       r"(?:\s+(?:—|--)\s+spec:\s*(?P<spec>\S+))?(?:\s+(?:—|--)\s+verdict:.*)?\s*$")


def today() -> str:
    return time.strftime("%Y-%m-%d")


def write_analysis(spec: Spec, results: Path) -> str:
    """The scripted READ: judge metrics.json against the criteria, if it is the metrics of the
    run RUN made; otherwise INCONCLUSIVE, with the cause, and no number judged."""
    metrics_path = results / "metrics.json"
    refused = runrecord.problem(results)
    metrics = None if refused else read_metrics(metrics_path)
    result, checks = evaluate(spec.criteria, metrics)
    rows = "\n".join(
        f"| {c.criterion.text.replace('|', '/')} | {c.criterion.metric or '-'} | "
        f"{c.observed if c.observed is not None else '-'} | {c.threshold_text} | "
        f"{'NOT JUDGED' if refused else c.result} |" for c in checks)
    if refused:
        source = f"Not judged: {refused}."
    elif metrics is None:
        source = f"{metrics_path} was not produced."
    else:
        source = f"{metrics_path}" + (
            f"; the run was aborted: {metrics.get('reason', 'no reason recorded')}" if metrics.get("aborted") else "")
    text = (f"# Analysis: {spec.id}\n\n{spec.title}\n\n## Verdict: {result}\n\n"
            f"| Criterion | Metric | Observed | Threshold | Result |\n|---|---|---|---|---|\n{rows}\n\n"
            f"Evidence: {source}\n{runrecord.provenance(results)}\n"
            f"{gpu_line(results)}Evaluated by the scripted READ agent on {today()}.\n")
    (results / "analysis.md").write_text(text)
    return result


def gpu_line(results: Path) -> str:
    """What the run's GPU check found (from the status its pull saved), as a line of the analysis."""
    try:
        gpu = json.loads((results / PULL_STATE).read_text())["status"].get("gpu")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    if not isinstance(gpu, dict):
        return ""
    if not gpu.get("ok"):
        return f"GPU: unavailable ({gpu.get('problem', 'no details')}); the command did not run.\n"
    torch = f"; torch {gpu['torch']} with CUDA {gpu['torch_cuda']}" if gpu.get("torch") else ""
    return (f"GPU: {len(gpu.get('devices', []))} × {', '.join(dict.fromkeys(gpu.get('devices', [])))}, "
            f"NVIDIA driver {gpu.get('driver', '?')}, CUDA {gpu.get('cuda') or '?'}{torch}.\n")


def abort_metrics(results: Path, reason: str) -> None:
    """metrics.json records why RUN was stopped; what the run did measure is kept beside it."""
    path = results / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.replace(path.with_name("metrics.partial.json"))
    path.write_text(json.dumps({"aborted": True, "reason": reason, "at": today()}, indent=2) + "\n")


def read_verdict(results: Path, *, any_run: bool = False) -> str | None:
    """The verdict of analysis.md; None when there is none, or (unless `any_run`) when it
    judged an earlier run than the one RUN last made (it does not name that run's id)."""
    try:
        text = (results / "analysis.md").read_text(encoding="utf-8")
    except OSError:
        return None
    m = VERDICT_RE.search(text)
    if not any_run and not runrecord.judges_current_run(results, text):
        return None
    return m.group(1) if m else None


def append_log_entry(root: Path, spec: Spec, results: Path) -> str:
    verdict = read_verdict(results) or "NO VERDICT"
    try:
        metrics = read_metrics(results / "metrics.json") or {}
    except KitError:
        metrics = {}
    shown = ", ".join(f"{k}={v}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    entry = (f"\n## {today()} — {spec.id}: {spec.title}\n- Verdict: **{verdict}**\n"
             f"- Metrics: {shown or '(none)'}\n- Results: {results.relative_to(root) if results.is_relative_to(root) else results}/\n")
    log = root / "RESEARCH_LOG.md"
    if not log.exists():
        log.write_text("# Research Log\n")
    with open(log, "a", encoding="utf-8") as f:
        f.write(entry)
    return verdict


# --- QUESTIONS.md and the program state ------------------------------------------------
@dataclass
class Question:
    line_no: int
    text: str
    spec: str | None
    done: bool


def read_questions(path: Path) -> list[Question]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        m = _QUESTION.match(line)
        if m:
            out.append(Question(n, m.group("text").strip(), m.group("spec"), m.group("done") != " "))
    return out


def mark_question(path: Path, spec: str, verdict: str) -> bool:
    """Tick the open question whose spec this is; True if one was found."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for q in read_questions(path):
        if not q.done and q.spec and Path(q.spec).name == Path(spec).name:
            lines[q.line_no] = f"- [x] {q.text} — spec: {q.spec} — verdict: {verdict} ({today()})"
            path.write_text("\n".join(lines) + "\n")
            return True
    return False


def add_question(path: Path, text: str) -> bool:
    if any(q.text == text for q in read_questions(path)):
        return False
    if not path.exists():
        path.write_text("# Research Questions\n\n## Open\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"- [ ] {text}\n")
    return True


def load_state(path: Path) -> dict:
    if not path.exists():
        return {"cycles": []}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise KitError(f"program state {path} is damaged; move it aside to start a new program") from None


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, state, indent=2)


# --- HANDOFF.md ------------------------------------------------------------------------
HANDOFF_SECTIONS = ("Context", "Decision Needed")


def handoff_problems(path: Path) -> list[str]:
    if not path.exists():
        return [f"{path.name} does not exist"]
    text = path.read_text(encoding="utf-8")
    problems = [f"section '## {s}'" for s in HANDOFF_SECTIONS if not re.search(rf"^##\s+{s}\s*$", text, re.M)]
    if not re.search(r"^Status:\s*(pending|complete)\s*$", text, re.M):
        problems.append("a 'Status: pending' line")
    return problems


def handoff_pending(path: Path) -> bool:
    return path.exists() and bool(re.search(r"^Status:\s*pending\s*$", path.read_text(encoding="utf-8"), re.M))


def complete_handoff(path: Path) -> Path:
    problems = handoff_problems(path)
    if problems:
        raise KitError(f"{path.name} is not a valid handoff: missing {', '.join(problems)}")
    text = re.sub(r"^Status:\s*pending\s*$", "Status: complete", path.read_text(encoding="utf-8"), flags=re.M)
    archive = path.parent / "handoffs" / f"{time.strftime('%Y%m%d-%H%M%S')}-HANDOFF.md"
    archive.parent.mkdir(exist_ok=True)
    archive.write_text(text + f"\nCompleted: {today()}\n")
    path.unlink()
    return archive


def write_handoff(path: Path, spec: Spec, reason: str) -> None:
    if path.exists():
        return  # never overwrite a human's pending handoff
    path.write_text(f"# Handoff: {spec.id}\n\nStatus: pending\n\n## Context\n{spec.title}\n\n{reason}\n\n"
                    f"## Decision Needed\nThe success criteria could not decide. Re-run, change the metrics, "
                    f"or accept the result as inconclusive?\n")


# --- SYNTHESIS.md ----------------------------------------------------------------------
def experiments(root: Path, results_root: Path) -> list[dict]:
    rows = []
    for spec_path in sorted((root / "experiments").glob("exp-*.md")):
        results = results_root / spec_path.stem
        rows.append({"id": spec_path.stem, "spec": str(spec_path.relative_to(root)),
                     "verdict": read_verdict(results) or ("(no verdict)" if results.exists() else "(not run)")})
    return rows


def write_synthesis(root: Path, results_root: Path, reason: str) -> Path:
    rows = experiments(root, results_root)
    table = "\n".join(f"| {r['id']} | {r['verdict']} |" for r in rows) or "| (no experiments) | |"
    open_qs = [q.text for q in read_questions(root / "QUESTIONS.md") if not q.done]
    text = (f"# Synthesis\n\n_{today()} — {reason}_\n\n## Experiments\n| Experiment | Verdict |\n|---|---|\n{table}\n\n"
            f"## Established\n" + "".join(f"- {r['id']}\n" for r in rows if r["verdict"] == "CONFIRMED")
            + "\n## Refuted\n" + "".join(f"- {r['id']}\n" for r in rows if r["verdict"] == "REFUTED")
            + "\n## Open questions\n" + "".join(f"- {q}\n" for q in open_qs))
    out = root / "SYNTHESIS.md"
    out.write_text(text)
    return out
