"""Experiment specs: markdown with fixed sections, success criteria, a compute profile and,
for the scripted agent, a run command (docs/specs.md).

orchestration-kit's specs read the same: a heading's parenthesised suffix is dropped
(`## Success Criteria (immutable once RUN begins)`), `## Independent Variables` stands for
`## Variables` and `## Resource Budget` for `## Budget`, the compute profile may sit under any
section, and a protocol in prose (no `## Run`) is fine for an LLM agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KitError, UsageError
from .criteria import ACCEPTED, Criterion, parse

REQUIRED_SECTIONS = ("Hypothesis", "Variables", "Controls", "Metrics", "Success Criteria")
ALIASES = {"Independent Variables": "Variables", "Resource Budget": "Budget"}
NEEDS_RUN = "a '## Run' section with the command in a ``` block (the scripted agent runs only that; a protocol in prose needs an LLM agent)"
_FENCE = re.compile(r"^```([\w-]*)\s*$")


def section_name(heading: str) -> str:
    """The section a `## ` heading opens: its parenthesised suffix dropped, aliases resolved."""
    name = re.sub(r"\s*\([^)]*\)\s*$", "", heading.strip()).strip()
    return ALIASES.get(name, name)


@dataclass
class Spec:
    path: Path
    id: str
    title: str
    sections: dict[str, str]
    run_command: str
    profile: dict | None
    profile_error: str
    criteria: list[Criterion] = field(default_factory=list)
    budget: dict[str, str] = field(default_factory=dict)

    @property
    def estimated_hours(self) -> float | None:
        value = (self.profile or {}).get("estimated_wall_hours")
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def problems(self, scripted: bool = True) -> list[str]:
        """What FRAME reports, empty when the spec can run: every missing or broken piece,
        and every criterion that does not parse. The scripted agent also needs a `## Run`
        command and machine criteria only; an LLM agent can follow prose and judge words."""
        out = [f"missing section '## {s}'" for s in REQUIRED_SECTIONS if s not in self.sections]
        if scripted and not self.run_command:
            out.append(f"missing {NEEDS_RUN}")
        if self.profile is None:
            out.append(f"missing {self.profile_error or 'a ### Compute Profile block with YAML'}")
        elif self.estimated_hours is None:
            out.append("missing estimated_wall_hours (a number) in the compute profile")
        if "Success Criteria" in self.sections and not self.criteria:
            out.append("missing criteria as '- [ ] metric >= value' lines under '## Success Criteria'")
        out += self.criteria_errors()
        if scripted:
            out += [f"line {c.line}: {c.text!r} is in words, which the scripted agent cannot judge; write it as "
                    "`metric op number` (or use an LLM agent)" for c in self.criteria if c.in_words]
        hours = self.budget.get("max_gpu_hours")
        if hours is not None and not _is_number(hours):
            out.append(f"max_gpu_hours under '## Budget' must be a number of hours, not {hours!r}")
        return out

    def criteria_errors(self) -> list[str]:
        """Criteria that can never be judged (RUN refuses to start with these), then the forms
        that would be."""
        errors = [c.describe() for c in self.criteria if c.error]
        return [*errors, ACCEPTED] if errors else []


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    if not p.is_file():
        hint = "; specs live in experiments/ (copy templates/experiment-spec.md)" if not p.exists() else ""
        raise KitError(f"spec {path} not found{hint}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read spec {path}: {e.__class__.__name__}") from None
    return parse_spec(text, p)


def parse_spec(text: str, path: Path) -> Spec:
    lines = text.splitlines()
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), path.stem)
    sections: dict[str, str] = {}
    starts: dict[str, int] = {}  # the line number a section's body starts after
    current, buf, in_fence = None, [], False
    for n, line in enumerate(lines, 1):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            if current:
                sections[current] = "\n".join(buf)
            current, buf = section_name(line[3:]), []
            starts[current] = n
        elif current:
            buf.append(line)
    if current:
        sections[current] = "\n".join(buf)
    run_body = re.split(r"^### ", sections.get("Run", ""), maxsplit=1, flags=re.M)[0]
    run_command = (_first_fence(run_body) or "").strip()
    profile, profile_error = _profile(text)
    first = starts.get("Success Criteria", 0)
    # [ \t], not \s: a match must not start on a blank line above the criterion (its line number)
    criteria = [parse(m.group(1).strip(), first + 1 + sections["Success Criteria"].count("\n", 0, m.start()))
                for m in re.finditer(r"^[ \t]*[-*][ \t]+\[[ xX]\][ \t]+(.+)$", sections.get("Success Criteria", ""), re.M)]
    budget = {re.sub(r"[\s-]+", "_", m.group(1).strip().lower()): m.group(2).strip()
              for m in re.finditer(r"^\s*[-*]\s+([\w -]+?)\s*:\s*(.+)$", sections.get("Budget", ""), re.M)}
    return Spec(path, path.stem, title, sections, run_command, profile, profile_error, criteria, budget)


def _first_fence(text: str, langs: tuple[str, ...] = ("", "bash", "sh", "shell", "console")) -> str | None:
    out, inside = [], False
    for line in text.splitlines():
        m = _FENCE.match(line.strip())
        if m and not inside:
            inside, keep = True, m.group(1) in langs
            out = []
        elif line.strip() == "```" and inside:
            if keep:
                return "\n".join(out)
            inside = False
        elif inside:
            out.append(line)
    return None


def _profile(text: str) -> tuple[dict | None, str]:
    m = re.search(r"^###\s+Compute Profile\b.*$", text, re.M)
    if not m:
        return None, "a '### Compute Profile' section"
    block = _first_fence(text[m.end():], langs=("yaml", "yml", ""))
    if block is None:
        return None, "a ```yaml block under '### Compute Profile'"
    import yaml

    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1} of the block)" if where else ""
        return None, f"valid YAML in the compute profile{line}"
    if not isinstance(data, dict):
        return None, "a YAML mapping (key: value lines) in the compute profile"
    return data, ""


def spec_command(spec: str) -> str:
    """The command of the spec's `## Run` block, for `cloud-run run --spec SPEC` without a command."""
    if not spec:
        raise UsageError("run needs a command (single-quoted: 'python3 train.py --out \"$RESULTS_DIR\"') "
                         "or --spec SPEC whose `## Run` block has one")
    command = load_spec(spec).run_command
    if not command:
        raise UsageError(f"{spec} has no command in a ``` block under '## Run'; add one there, or give the "
                         f"command (single-quoted) as the first argument of `cloud-run run`")
    return command
