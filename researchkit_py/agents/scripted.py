"""The scripted agent: every phase done by plain code, so the whole cycle runs without an LLM.

It reads the same rendered prompt the LLM agents get, and obeys it: in RUN, the command block of
a mandatory compute directive is pasted into bash as written, as a model does.
Its log is JSON lines in the same shape as Claude Code's stream-json.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

from ..argv import ArgumentParser
from ..errors import KitError, run_cli
from ..experiment import records
from ..experiment.prompts import PHASES
from ..experiment.spec import load_spec
from ..settings import Settings

_T0 = time.time()


def emit(kind: str, **fields) -> None:
    print(json.dumps({"type": kind, **fields}), flush=True)


def say(text: str) -> None:
    emit("assistant", message={"content": [{"type": "text", "text": text}]})


def finish(ok: bool, text: str) -> int:
    emit("result", subtype="success" if ok else "error", is_error=not ok, result=text,
         duration_ms=int((time.time() - _T0) * 1000))
    return 0 if ok else 1


def directive_block(prompt: str) -> str | None:
    """The command block a mandatory directive prescribes — the indented lines after "Use
    cloud-run to execute the experiment:" — exactly as written (dedented), as a model copies it."""
    if "(MANDATORY" not in prompt:
        return None
    m = re.search(r"^Use cloud-run to execute the experiment:\n((?:[ \t]+\S.*\n?)+)", prompt, re.M)
    return textwrap.dedent(m.group(1)).rstrip("\n") if m else None


def stream(command: str, env: dict[str, str]) -> int:
    """Paste `command` into bash, as a model's shell tool does; stream what it prints."""
    emit("assistant", message={"content": [{"type": "tool_use", "name": "Bash", "input": {"command": command}}]})
    proc = subprocess.Popen(["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        emit("user", message={"content": [{"type": "tool_result", "content": line.rstrip()}]})
    return proc.wait()


def phase_frame(args) -> int:
    spec = load_spec(args.spec)
    problems = spec.problems()
    if problems:
        return finish(False, f"{args.spec} is not ready to run: {'; '.join(problems)}")
    return finish(True, f"{spec.id}: spec complete ({len(spec.criteria)} criteria, ~{spec.estimated_hours:g} h)")


def phase_run(args, prompt: str) -> int:
    spec = load_spec(args.spec)
    if not spec.run_command:
        return finish(False, f"{args.spec} has no command under '## Run'; add one in a ``` block")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    env = {**Settings(read_file=False).environ, "RESULTS_DIR": str(results)}
    command = directive_block(prompt)
    if command:
        say("The compute directive is mandatory: running the experiment through cloud-run.")
    else:
        command = spec.run_command
        say(f"Running the experiment locally with RESULTS_DIR={results}.")
    code = stream(command, env)
    if code != 0:
        return finish(False, f"the experiment command exited {code}")
    found = "metrics.json present" if (results / "metrics.json").exists() else "no metrics.json yet"
    return finish(True, f"{spec.id}: run finished ({found})")


def phase_read(args) -> int:
    spec = load_spec(args.results + "/spec.md" if Path(args.results, "spec.md").exists() else args.spec)
    spec.id = Path(args.spec).stem
    verdict = records.write_analysis(spec, Path(args.results))
    if verdict == "INCONCLUSIVE":
        records.write_handoff(Path("HANDOFF.md"), spec, "The scripted READ could not reach a verdict.")
    return finish(True, f"## Verdict: {verdict}")


def phase_log(args) -> int:
    spec = load_spec(args.spec)
    verdict = records.append_log_entry(Path.cwd(), spec, Path(args.results))
    records.mark_question(Path("QUESTIONS.md"), args.spec, verdict)
    return finish(True, f"logged {spec.id}: {verdict}")


def phase_survey(args) -> int:
    words = {w for w in re.findall(r"[a-z]{4,}", args.question.lower())}
    related = []
    for p in sorted(Path("experiments").glob("exp-*.md")):
        text = p.read_text(encoding="utf-8", errors="replace").lower()
        if words & set(re.findall(r"[a-z]{4,}", text)):
            related.append(p.stem)
    out = Path(args.survey_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Survey: {args.question}", "", f"_{records.today()}_", ""]
    if args.pi_directive:
        lines += [f"PI directive: {args.pi_directive}", ""]
    lines += ["## Related experiments"] + ([f"- {r}" for r in related] or ["- none yet"])
    out.write_text("\n".join(lines) + "\n")
    added = records.add_question(Path("QUESTIONS.md"), args.question)
    return finish(True, f"wrote {out} ({len(related)} related experiments){'; question added' if added else ''}")


def phase_synthesize(args) -> int:
    out = records.write_synthesis(Path.cwd(), Path(args.results_root), args.reason)
    return finish(True, f"wrote {out.name}")


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="scripted-agent")
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--prompt", required=True)
    p.add_argument("--spec", default="")
    p.add_argument("--results", default="")
    p.add_argument("--results-root", default="results")
    p.add_argument("--question", default="")
    p.add_argument("--pi-directive", default="")
    p.add_argument("--survey-file", default="")
    p.add_argument("--reason", default="")
    args = p.parse_args(argv)
    prompt = Path(args.prompt).read_text(encoding="utf-8")
    emit("system", subtype="init", agent="scripted", phase=args.phase)
    phases = {"survey": phase_survey, "frame": phase_frame, "run": lambda a: phase_run(a, prompt),
              "read": phase_read, "log": phase_log, "synthesize": phase_synthesize}
    try:
        return phases[args.phase](args)
    except KitError as e:
        finish(False, str(e))
        raise


if __name__ == "__main__":
    run_cli("scripted-agent", main)
