"""Experiment specs: markdown with fixed sections, a run command and a compute profile."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KitError

REQUIRED_SECTIONS = ("Hypothesis", "Variables", "Controls", "Metrics", "Success Criteria", "Run")
_FENCE = re.compile(r"^```([\w-]*)\s*$")


@dataclass
class Spec:
    path: Path
    id: str
    title: str
    sections: dict[str, str]
    run_command: str
    profile: dict | None
    profile_error: str
    criteria: list[str] = field(default_factory=list)
    budget: dict[str, str] = field(default_factory=dict)

    @property
    def estimated_hours(self) -> float | None:
        value = (self.profile or {}).get("estimated_wall_hours")
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def problems(self) -> list[str]:
        """What FRAME reports as missing or broken; empty when the spec is runnable."""
        out = [f"section '## {s}'" for s in REQUIRED_SECTIONS if s not in self.sections]
        if "Run" in self.sections and not self.run_command:
            out.append("a command in a ``` block under '## Run'")
        if self.profile is None:
            out.append(self.profile_error or "a '### Compute Profile' block with YAML")
        elif self.estimated_hours is None:
            out.append("estimated_wall_hours (a number) in the compute profile")
        if "Success Criteria" in self.sections and not self.criteria:
            out.append("criteria as '- [ ] metric >= value' lines under '## Success Criteria'")
        return out


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
    current, buf, in_fence = None, [], False
    for line in lines:
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            if current:
                sections[current] = "\n".join(buf)
            current, buf = line[3:].strip(), []
        elif current:
            buf.append(line)
    if current:
        sections[current] = "\n".join(buf)
    run_body = re.split(r"^### ", sections.get("Run", ""), maxsplit=1, flags=re.M)[0]
    run_command = (_first_fence(run_body) or "").strip()
    profile, profile_error = _profile(text)
    criteria = [m.group(1).strip() for m in re.finditer(r"^\s*[-*]\s+\[[ xX]\]\s+(.+)$",
                                                          sections.get("Success Criteria", ""), re.M)]
    budget = {m.group(1).strip().lower(): m.group(2).strip()
              for m in re.finditer(r"^\s*[-*]\s+([\w ]+?)\s*:\s*(.+)$", sections.get("Budget", ""), re.M)}
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
    m = re.search(r"^###\s+Compute Profile\s*$", text, re.M)
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
