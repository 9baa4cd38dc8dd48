"""A phase's two Python calls from experiment.sh: `begin` prepares it in one go (settings,
spec, agent, the frozen copy, locks, prompt) and prints shell assignments; `end` closes it
(unlock, the agent's summary, the phase's own check)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..agents import clis
from ..clouds import registry as clouds
from ..errors import KitError, say
from ..settings import ENV_FILE, Settings, parse_env_file
from . import records, runrecord
from .budget import run_limits
from .locks import lock, unlock
from .prompts import compute_directive, render
from .spec import Spec, load_spec

KIT_ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("claude", "codex", "scripted")


class Shell:
    """Assignments for experiment.sh to eval: `export` for what its children must see too."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def set(self, name: str, value: object, export: bool = False) -> None:
        self.lines.append(f"{'export ' if export else ''}{name}={shlex.quote(str(value))}")

    def set_array(self, name: str, values: list[str]) -> None:
        self.lines.append(f"{name}=({' '.join(map(shlex.quote, values))})")

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
        "RESULTS_ROOT": settings["RESULTS_ROOT"], "DATA_DIR": settings["DATA_DIR"], "EXP_PROJECT_ROOT": settings.root,
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


def _agent(settings: Settings, out: Shell) -> str:
    """The agent (exported as EXP_AGENT); a CLI's version is checked once per experiment.sh
    invocation (exported as EXP_AGENT_VERSION), with a warning outside the tested range."""
    name = settings.text("EXP_AGENT")
    if not name:
        if not shutil.which("claude"):
            raise KitError("no agent: install Claude Code (npm install -g @anthropic-ai/claude-code) or set EXP_AGENT=scripted")
        name = "claude"
    if name not in AGENTS:
        raise KitError(f"EXP_AGENT={name} is not one of {', '.join(AGENTS)}")
    if name != "scripted" and not shutil.which(name):
        raise KitError(f"EXP_AGENT={name} but '{name}' is not on PATH; install it or set EXP_AGENT=scripted")
    out.set("EXP_AGENT", name, export=True)
    checked = settings.text("EXP_AGENT_VERSION")
    if name in clis.TESTED and not checked.startswith(f"{name} "):
        version, warning = clis.check_version(name)
        if warning:
            say(f"experiment.sh: {warning}")
        out.set("EXP_AGENT_VERSION", f"{name} {version}", export=True)
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
            _agent(settings, out)
        return out.text()
    if phase == "batch":
        _agent(settings, out)
        record = _lock_record(values, "batch")
        lock(record, _other_results(values, [Path(s).stem for s in args.specs]))  # once for all its runs
        out.set("LOCK_RECORD", record)
        return out.text()
    fields = {"reason": args.reason, "question": args.question,
              "pi_directive": f"PI directive (takes precedence): {args.pi_directive}" if args.pi_directive else ""}
    spec, results = _begin_spec(args, values, fields, out)
    agent = _agent(settings, out)
    guard: list[Path] = []  # what the agent's hook refuses to let it change
    budget = settings.integer("EXP_PHASE_BUDGET")
    if phase == "survey":
        slug = "-".join("".join(c if c.isalnum() else " " for c in args.question).split())[:40].rstrip("-")
        fields["survey_file"] = f"surveys/{time.strftime('%Y%m%d-%H%M%S')}-{slug}.md"
        out.set("SURVEY_FILE", fields["survey_file"])
    elif phase == "run":
        assert spec is not None and results is not None
        fields["compute_advisory"] = _begin_run(spec, results, values, settings, out)
        guard = [spec.path, results / "spec.md"]
        budget = run_limits(settings, spec, values["COMPUTE_TARGET"])[0]
    elif phase == "read":
        assert results is not None
        if not results.is_dir():
            raise KitError(f"no results for {results.name} in {results}; run it first (experiment.sh run {args.spec})")
        guard = [Path(args.spec), results / "spec.md", results / "metrics.json", results / runrecord.RECORD]
        record = _lock_record(values, f"read-{results.name}")
        lock(record, guard, exact_mode=0o444)
        out.set("LOCK_RECORD", record)
        fields["run_record"] = runrecord.read_brief(results)
    elif phase == "log":
        assert results is not None
        out.set("VERDICT", records.read_verdict(results) or "")
    out.set("PROMPT_FILE", _write_prompt(values, phase, fields))
    flags, env = clis.agent_call(agent, phase, settings, guard=[p.resolve() for p in guard], budget=budget,
                                 cloud_run=phase == "run" and clouds.target(values["COMPUTE_TARGET"]).cloud is not None)
    out.set_array("AGENT_FLAGS", flags)
    out.set_array("AGENT_ENV", env)
    out.set("PHASE_BUDGET", budget)
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
    """RUN: the frozen copy READ judges against, the record of this run, the locks, the directive."""
    errors = spec.criteria_errors()
    if errors:  # READ could never judge them: nothing runs (FRAME says the same)
        raise KitError(f"{spec.path}: {'; '.join(errors)}")
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
    target = values["COMPUTE_TARGET"]
    cloud = clouds.target(target).cloud
    runrecord.start(results, spec.id, target, cloud=bool(cloud))
    if cloud:
        from ..machine import SPEC, choose

        # Absolute paths, and EXP_PROJECT_ROOT exported: the block runs the same from any directory.
        data_dir, machine = values["DATA_DIR"], choose(cloud, settings, spec=spec.path)
        return compute_directive(
            target, okit=values["ORCHESTRATION_KIT_ROOT"], spec=str(spec.path.resolve()), results=str(results.resolve()),
            command=spec.run_command, data_dir=data_dir if Path(data_dir).is_dir() else None,
            max_hours=f"{run_limits(settings, spec, target)[1]:g}",
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
    errors = stderr.read_text(encoding="utf-8", errors="replace") if stderr.is_file() else ""
    if errors:
        print("\n".join(f"  ! {line}" for line in errors.splitlines()[-5:]), file=sys.stderr)
    record = _finish_run(args) if args.phase == "run" else None
    if args.phase == "run" and args.rc == 124:
        raise KitError(f"RUN of {args.spec_id} exceeded its time budget ({args.budget}s); "
                       f"{args.results}/metrics.json records the abort")
    if args.rc == 124:
        raise KitError(f"{args.phase.upper()} ran past its time budget ({args.budget}s) and was stopped; see {log} "
                       f"(EXP_PHASE_BUDGET sets it)")
    agent, _, version = settings.text("EXP_AGENT_VERSION").partition(" ")
    refused = clis.refused_flag(agent, version, errors) if args.rc != 0 else None
    if refused:
        raise KitError(refused)
    if args.rc != 0:
        what = {"frame": f"FRAME failed for {args.spec}",
                "run": f"RUN of {args.spec_id} failed (exit {args.rc}){_cloud_failure(record)}",
                "read": f"READ of {args.spec_id} failed (exit {args.rc})"}.get(args.phase, f"{args.phase.upper()} failed")
        raise KitError(f"{what}; see {log}")
    if record is not None:
        return _run_outcome(args, record, log)
    if args.phase == "frame":  # whatever the agent did, RUN starts only from a complete spec
        problems = load_spec(args.spec).problems(scripted=settings.text("EXP_AGENT") == "scripted")
        if problems:
            raise KitError(f"{args.spec} is not ready to run: {'; '.join(problems)} (see docs/specs.md)")
    if args.phase == "read":
        return _end_read(Path(args.results), args.spec_id)
    return ""


def _finish_run(args) -> dict:
    """RUN's record says what the run came to, written before any check can fail the phase."""
    aborted = f"RUN exceeded its time budget of {args.budget}s" if args.rc == 124 else ""
    if aborted:
        records.abort_metrics(Path(args.results), aborted)
    return runrecord.finish(Path(args.results), args.rc, aborted)


def _cloud_failure(record: dict | None) -> str:
    if not record or not record["cloud"] or record["state"] != "FAILED":
        return ""
    return f": run {record.get('run_id') or '(none)'} FAILED: {record['cause']}"


def _run_outcome(args, record: dict, log: Path) -> str:
    """A run that failed fails RUN, whatever the agent said; one still going is said so."""
    run = record.get("run_id")
    if record["state"] == "FAILED":
        raise KitError(f"RUN of {args.spec_id} failed{_cloud_failure(record)}; "
                       + (f"`cloud-run logs {run}` shows why" if run else f"see {log}"))
    if record["state"] != runrecord.DONE:
        return f"  run {run or args.spec_id} is {record['state']}: {record['cause']}\n"
    return ""


def _end_read(results: Path, spec_id: str) -> str:
    """READ's verdict stands only for the metrics of the run RUN made; the analysis names them."""
    verdict = records.read_verdict(results, any_run=True)
    if not verdict:
        raise KitError(f"READ wrote no '## Verdict:' line in {results}/analysis.md")
    refused = runrecord.check_verdict(results, verdict)
    analysis = results / "analysis.md"
    if refused:
        analysis.replace(results / "analysis.refused.md")
        raise KitError(f"{refused}; only INCONCLUSIVE can stand, so the analysis was moved to "
                       f"{results}/analysis.refused.md; read {spec_id} again")
    text = analysis.read_text(encoding="utf-8")
    if not runrecord.judges_current_run(results, text):
        analysis.write_text(text.rstrip("\n") + f"\n\n{runrecord.provenance(results)}\n")
    return f"  Verdict: {verdict}\n"

