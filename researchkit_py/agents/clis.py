"""The agent CLIs experiment.sh drives (Claude Code, Codex): the versions tested, each phase's
flags and environment, and a CLI's refusal of a flag turned into one line.

tests/agents/FACTS.md records what the real CLIs were seen to do; the tests in
tests/py/test_agent_cycles.py run whole cycles with exactly these flags.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from ..errors import KitError
from ..settings import Settings

KIT_ROOT = Path(__file__).resolve().parents[2]
GUARD_HOOK = KIT_ROOT / "tools" / "guard-hook"

# The versions the tests drive: [first tested, first untested). tests/agents/package.json pins
# the first one; a test checks that the pins fall inside.
TESTED = {"claude": ("2.1.330", "2.2"), "codex": ("0.169.0", "0.170")}
PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}

# Claude Code: the tools each phase is offered (--tools) and pre-approved (--allowedTools);
# --allowedTools alone offers every tool.
PHASE_TOOLS = {"survey": "Read,Grep,Glob,WebSearch,WebFetch,Write,Edit", "run": "Read,Grep,Glob,Write,Edit,Bash",
               "read": "Read,Grep,Glob,Write,Bash"}
DEFAULT_TOOLS = "Read,Grep,Glob,Write,Edit"
# No telemetry, error reports, update checks or other requests but the model's.
CLAUDE_QUIET = ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_TELEMETRY=1", "DISABLE_ERROR_REPORTING=1",
                "DISABLE_AUTOUPDATER=1")
# Codex's equivalents are configuration keys (plugins: a `git ls-remote` to github.com at start).
CODEX_QUIET = ("check_for_update_on_startup=false", "analytics.enabled=false", "features.plugins=false",
               "features.remote_plugin=false")
# The tool names each CLI gives its PreToolUse hooks for what can change a file.
GUARDED_TOOLS = {"claude": "Edit|MultiEdit|Write|NotebookEdit|Bash", "codex": "Bash|apply_patch"}
REFUSED = re.compile(r"error: (?:unknown option|unexpected argument) '([^']+)'")


def tested_range(agent: str) -> str:
    low, high = TESTED[agent]
    return f"{agent} >={low} <{high}"


def install_hint(agent: str) -> str:
    return f"npm install -g {PACKAGES[agent]}@{TESTED[agent][0]}"


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in version.split("."))


def check_version(agent: str) -> tuple[str, str]:
    """(the CLI's version, a one-line warning when it is outside the tested range, else "")."""
    try:
        out = subprocess.run([agent, "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        found = re.search(r"\b\d+\.\d+\.\d+\b", out.stdout) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        found = None
    if not found:
        raise KitError(f"`{agent} --version` failed; reinstall it ({install_hint(agent)}) or set EXP_AGENT=scripted")
    version = found.group(0)
    low, high = TESTED[agent]
    if _numbers(low) <= _numbers(version) < _numbers(high):
        return version, ""
    return version, (f"warning: {agent} {version} is outside the tested range ({tested_range(agent)}); "
                     f"if a phase fails, install a tested one: {install_hint(agent)}")


def refused_flag(agent: str, version: str, stderr: str) -> str | None:
    """The one-line error for a CLI that rejected one of our flags, or None."""
    m = REFUSED.search(stderr)
    if agent not in TESTED or not m:
        return None
    return (f"{agent} {version or '(version unknown)'} refused the flag {m.group(1)}; researchkit is tested with "
            f"{tested_range(agent)}: {install_hint(agent)}")


def guard_hook(agent: str, paths: list[Path]) -> dict:
    """A PreToolUse hook entry running tools/guard-hook on `paths` (the same in both CLIs)."""
    command = shlex.join([str(GUARD_HOOK), *map(str, paths)])
    return {"matcher": GUARDED_TOOLS[agent], "hooks": [{"type": "command", "command": command}]}


def agent_call(agent: str, phase: str, settings: Settings, *, guard: list[Path], cloud_run: bool,
               budget: int) -> tuple[list[str], list[str]]:
    """(flags, KEY=value environment) for the agent's CLI in this phase; the phase prompt and
    the output format are experiment.sh's."""
    if agent == "claude":
        tools = PHASE_TOOLS.get(phase, DEFAULT_TOOLS)
        flags = ["--tools", tools, "--allowedTools", tools]
        if guard:
            flags += ["--settings", json.dumps({"hooks": {"PreToolUse": [guard_hook(agent, guard)]}})]
        # A Bash command is stopped after 2 minutes by default: an attached cloud run takes longer.
        limit = budget * 1000
        return flags, [*CLAUDE_QUIET, f"API_TIMEOUT_MS={settings['API_TIMEOUT_MS']}",
                       f"CLAUDE_CODE_MAX_RETRIES={settings['CLAUDE_CODE_MAX_RETRIES']}",
                       f"BASH_DEFAULT_TIMEOUT_MS={limit}", f"BASH_MAX_TIMEOUT_MS={limit}"]
    if agent == "codex":
        flags = ["--sandbox", "workspace-write", "-c", 'approval_policy="never"']
        for key in CODEX_QUIET:
            flags += ["-c", key]
        if guard:  # hooks given on the command line run only with the trust check bypassed
            flags += ["-c", f"hooks.PreToolUse=[{inline_toml(guard_hook(agent, guard))}]", "--dangerously-bypass-hook-trust"]
        if cloud_run:  # cloud-run reaches the bucket and the cloud, and keeps its state outside the project
            flags += ["-c", "sandbox_workspace_write.network_access=true"]
            for d in _cloud_run_dirs(settings):
                flags += ["--add-dir", str(d)]
        if not any((d / ".git").exists() for d in (settings.root, *settings.root.parents)):
            flags.append("--skip-git-repo-check")
        return [*flags, "--cd", str(settings.root)], []
    return [], []


def _cloud_run_dirs(settings: Settings) -> list[Path]:
    """What cloud-run writes outside the project: its state (embedded VMs, bucket, reaper
    stamps) and a directory bucket."""
    dirs = [settings.state_home()]
    bucket = settings.text("RK_BUCKET")
    if bucket and ("://" not in bucket or bucket.startswith("file://")):
        dirs.append(Path(bucket.removeprefix("file://")).expanduser())
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def inline_toml(value: object) -> str:
    """An inline TOML value (JSON strings are TOML basic strings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={inline_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(inline_toml(v) for v in value) + "]"
    return json.dumps(value)
