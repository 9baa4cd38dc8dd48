"""A phase's two Python calls from experiment.sh: `begin` prepares it in one go (settings,
spec, agent, the frozen copy, locks, prompt) and prints shell assignments; `end` closes it
(unlock, the agent's summary, the phase's own check)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..clouds import registry as clouds
from ..errors import KitError
from ..settings import ENV_FILE, Settings, parse_env_file
from . import records
from .locks import lock, unlock
from .prompts import compute_directive, render
from .spec import Spec, load_spec

KIT_ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("claude", "codex", "scripted")
# The tools each phase may use (Claude Code's --allowedTools).
PHASE_TOOLS = {"survey": "Read,Grep,Glob,WebSearch,WebFetch,Write,Edit", "run": "Read,Grep,Glob,Write,Edit,Bash",
               "read": "Read,Grep,Glob,Write,Bash"}
DEFAULT_TOOLS = "Read,Grep,Glob,Write,Edit"


class Shell:
    """Assignments for experiment.sh to eval: `export` for what its children must see too."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def set(self, name: str, value: object, export: bool = False) -> None:
        self.lines.append(f"{'export ' if export else ''}{name}={shlex.quote(str(value))}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _settings_exports(settings: Settings, out: Shell) -> dict[str, str]:
    """The settings experiment.sh and every child it starts see; values from the env file
    become environment for them (the environment already wins over the file)."""
    for key, value in parse_env_file(settings.root / ENV_FILE).items():
        if key not in settings.environ:
            out.set(key, value, export=True)
    target = clouds.target(settings["COMPUTE_TARGET"])
    state = settings["KIT_STATE_DIR"]
    values = {
        "COMPUTE_TARGET": target.name, "KIT_STATE_DIR": state, "EXP_LOG_DIR": settings.text("EXP_LOG_DIR", f"{state}/logs"),
        "RESULTS_ROOT": settings["RESULTS_ROOT"], "DATA_DIR": settings["DATA_DIR"],
        "ORCHESTRATION_KIT_ROOT": settings.text("ORCHESTRATION_KIT_ROOT", str(KIT_ROOT)),
    }
    for key, value in values.items():
        out.set(key, value, export=True)
    out.set("IS_CLOUD", 1 if target.cloud else 0)
    Path(state).mkdir(parents=True, exist_ok=True)
    ignore = Path(state) / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # the kit's state is never committed
    return values


def _agent(settings: Settings) -> str:
    name = settings.text("EXP_AGENT")
    if not name:
        if not shutil.which("claude"):
            raise KitError("no agent: install Claude Code (npm install -g @anthropic-ai/claude-code) or set EXP_AGENT=scripted")
        return "claude"
    if name not in AGENTS:
        raise KitError(f"EXP_AGENT={name} is not one of {', '.join(AGENTS)}")
    if name != "scripted" and not shutil.which(name):
        raise KitError(f"EXP_AGENT={name} but '{name}' is not on PATH; install it or set EXP_AGENT=scripted")
    return name


def _write_prompt(values: dict, phase: str, fields: dict[str, str]) -> Path:
    prompts = Path(values["KIT_STATE_DIR"]) / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    path = prompts / f"{phase}.{_caller_pid()}.md"
    path.write_text(render(phase, fields))
    return path


def _caller_pid() -> int:
    return os.getppid()  # the bash (sub)shell that runs the phase: parallel runs of a batch differ


def _lock_record(values: dict, name: str) -> Path:
    return Path(values["KIT_STATE_DIR"]) / "locks" / f"{name}.{_caller_pid()}.json"


def cmd_begin(args, settings: Settings) -> str:
    """Prepare a phase (or batch, program): settings, spec, agent, frozen copy, locks, prompt."""
    out = Shell()
    values = _settings_exports(settings, out)
    phase = args.phase
    if phase == "program":
        if not args.dry_run:
            out.set("EXP_AGENT", _agent(settings), export=True)
        return out.text()
    if phase == "batch":
        out.set("EXP_AGENT", _agent(settings), export=True)
        record = _lock_record(values, "batch")
        lock(record, _other_results(values, [Path(s).stem for s in args.specs]))  # once for all its runs
        out.set("LOCK_RECORD", record)
        return out.text()
    fields = {"reason": args.reason, "question": args.question,
              "pi_directive": f"PI directive (takes precedence): {args.pi_directive}" if args.pi_directive else ""}
    spec, results = _begin_spec(args, values, fields, out)
    out.set("EXP_AGENT", _agent(settings), export=True)
    if phase == "survey":
        slug = "-".join("".join(c if c.isalnum() else " " for c in args.question).split())[:40].rstrip("-")
        fields["survey_file"] = f"surveys/{time.strftime('%Y%m%d-%H%M%S')}-{slug}.md"
        out.set("SURVEY_FILE", fields["survey_file"])
    elif phase == "run":
        assert spec is not None and results is not None
        fields["compute_advisory"] = _begin_run(spec, results, values, settings, out)
    elif phase == "read":
        assert results is not None
        if not results.is_dir():
            raise KitError(f"no results for {results.name} in {results}; run it first (experiment.sh run {args.spec})")
        locked = [Path(args.spec), results / "spec.md", results / "metrics.json"]
        record = _lock_record(values, f"read-{results.name}")
        lock(record, locked, exact_mode=0o444)
        out.set("LOCK_RECORD", record)
        out.set("GUARD_PATHS", ":".join(map(str, locked)))
    elif phase == "log":
        assert results is not None
        out.set("VERDICT", records.read_verdict(results) or "")
    out.set("PROMPT_FILE", _write_prompt(values, phase, fields))
    out.set("AGENT_TOOLS", PHASE_TOOLS.get(phase, DEFAULT_TOOLS))
    out.set("GUARD_SETTINGS", guard_settings())
    return out.text()


def _begin_spec(args, values: dict, fields: dict, out: Shell) -> tuple[Spec | None, Path | None]:
    """The phase's spec (None while FRAME has yet to write it) and results directory."""
    if not args.spec:
        return None, None
    spec = None
    if Path(args.spec).exists():
        spec = load_spec(args.spec)
    elif args.phase != "frame":  # FRAME may be the one that writes it
        raise KitError(f"spec {args.spec} not found; specs live in experiments/ (copy templates/experiment-spec.md)")
    spec_id = Path(args.spec).stem
    results = Path(values["RESULTS_ROOT"]) / spec_id
    fields.update(spec=args.spec, spec_id=spec_id, results_dir=str(results))
    out.set("SPEC_ID", spec_id)
    out.set("SPEC_TITLE", spec.title if spec else spec_id)
    out.set("RESULTS_PATH", results)
    return spec, results


def _begin_run(spec: Spec, results: Path, values: dict, settings: Settings, out: Shell) -> str:
    """RUN: the frozen copy READ judges against, the locks, the time budget, the directive."""
    results.mkdir(parents=True, exist_ok=True)
    frozen = results / "spec.md"
    if frozen.exists():
        frozen.chmod(0o644)
    shutil.copyfile(spec.path, frozen)
    frozen.chmod(0o444)
    record = _lock_record(values, f"run-{spec.id}")
    lock(record, [spec.path], exact_mode=0o444)
    if not settings.get("EXP_RESULTS_LOCKED"):  # a batch locked the others' results once for all
        lock(record, _other_results(values, [spec.id]))
    out.set("LOCK_RECORD", record)
    est = spec.estimated_hours
    out.set("RUN_BUDGET_SECONDS", settings.text("EXP_TIME_BUDGET") or (str(max(600, int(est * 3600 * 2))) if est else ""))
    target = values["COMPUTE_TARGET"]
    cloud = clouds.target(target).cloud
    if cloud:
        from ..machine import SPEC, choose

        data_dir, machine = values["DATA_DIR"], choose(cloud, settings, spec=spec.path)
        return compute_directive(
            target, okit=values["ORCHESTRATION_KIT_ROOT"], spec=str(spec.path), results=str(results),
            command=spec.run_command, data_dir=data_dir if Path(data_dir).is_dir() else None,
            max_hours=f"{settings.max_hours(spec.budget.get('max_gpu_hours')):g}",
            machine=machine.describe() if machine.source == SPEC else "")  # the default goes unsaid
    # Local RUN gets the preflight advisory only when a tools root is configured: without one,
    # local RUN is exactly as it always was.
    preflight = Path(values["ORCHESTRATION_KIT_ROOT"]) / "tools" / "preflight"
    if settings.get("ORCHESTRATION_KIT_ROOT") and preflight.is_file():
        try:
            return subprocess.run([str(preflight), str(spec.path)], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    return ""


def _other_results(values: dict, exclude: list[str]) -> list[Path]:
    """Results directories of other experiments: what RUN locks."""
    root = Path(values["RESULTS_ROOT"])
    return [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in exclude] if root.is_dir() else []


def cmd_end(args, settings: Settings) -> str:
    """Close a phase: unlock, show the agent's summary, check what the phase must leave."""
    from .streamlog import summary

    if args.lock_record:
        unlock(Path(args.lock_record))
    log = Path(args.log)
    print("\n".join("  " + line for line in summary(log).splitlines()))
    stderr = Path(f"{log}.stderr")
    if stderr.is_file() and stderr.stat().st_size:
        tail = stderr.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        print("\n".join(f"  ! {line}" for line in tail), file=sys.stderr)
    if args.phase == "run" and args.rc == 124:
        records.abort_metrics(Path(args.results), f"RUN exceeded its time budget of {args.budget}s")
        raise KitError(f"RUN of {args.spec_id} exceeded its time budget ({args.budget}s); "
                       f"{args.results}/metrics.json records the abort")
    if args.rc != 0:
        what = {"frame": f"FRAME failed for {args.spec}", "run": f"RUN of {args.spec_id} failed (exit {args.rc})",
                "read": f"READ of {args.spec_id} failed (exit {args.rc})"}.get(args.phase, f"{args.phase.upper()} failed")
        raise KitError(f"{what}; see {log}")
    if args.phase == "frame":  # whatever the agent did, RUN starts only from a complete spec
        problems = load_spec(args.spec).problems()
        if problems:
            raise KitError(f"{args.spec} is missing: {'; '.join(problems)} (see templates/experiment-spec.md)")
    if args.phase == "read":
        verdict = records.read_verdict(Path(args.results))
        if not verdict:
            raise KitError(f"READ wrote no '## Verdict:' line in {args.results}/analysis.md")
        return f"  Verdict: {verdict}\n"
    return ""


def guard_settings() -> str:
    """Claude Code --settings JSON registering the PreToolUse guard."""
    matcher = "Edit|MultiEdit|Write|NotebookEdit|Bash"
    hook = shlex.quote(str(KIT_ROOT / "tools" / "guard-hook"))
    return json.dumps({"hooks": {"PreToolUse": [{"matcher": matcher, "hooks": [{"type": "command", "command": hook}]}]}})
