"""Phase prompts (prompts/<phase>.md) and the compute directive injected into RUN."""

from __future__ import annotations

import re
from pathlib import Path

from ..clouds.registry import target as compute_target
from ..errors import KitError

KIT_ROOT = Path(__file__).resolve().parents[2]
PHASES = ("survey", "frame", "run", "read", "log", "synthesize")


def compute_directive(target: str, *, okit: str, spec: str, results: str, command: str,
                      data_dir: str | None, max_hours: str, machine: str = "") -> str:
    """The mandatory directive (orchestration-kit's wording), for each cloud target; empty for
    local. `machine`: what the launch will get (machine.choose), said before the command."""
    t = compute_target(target)
    if t.cloud is None:
        return ""
    label, backend, where = t.label, t.cloud, t.where
    data = f"      --data-dirs {data_dir}/ \\\n" if data_dir else ""
    run = command.replace('"', '\\"') if command and "\n" not in command else "python <your-script>"
    machine_line = f"The machine: {machine} (cloud-run picks it from --spec).\n" if machine else ""
    return f"""
## Compute Directive (MANDATORY — {label})
ALL training and heavy computation MUST run {where}. Do NOT run model training locally.
{machine_line}
Use cloud-run to execute the experiment:
  {okit}/tools/cloud-run run "{run}" \\
      --backend {backend} \\
      --spec {spec} \\
{data}      --output-dir {results}/ \\
      --max-hours {max_hours}

IMPORTANT:
- Do NOT use --detach. Wait for the run to complete.
- After cloud-run finishes, pull results:
    {okit}/tools/cloud-run pull <run-id> --output-dir {results}/
- Write the cloud-run run-id to {results}/.cloud-run-id (cloud-run run writes it for you).
- Verify metrics.json exists in {results}/ before exiting.
- You may run the MVE (minimal viable experiment) locally for fast iteration,
  but the FULL experiment (all splits, all configs) MUST run {where}.
- Local-only tasks (data loading verification, normalization checks, small sanity checks) are fine locally."""


def render(phase: str, values: dict[str, str], prompts_dir: Path | None = None) -> str:
    if phase not in PHASES:
        raise KitError(f"unknown phase {phase!r}")
    path = (prompts_dir or KIT_ROOT / "prompts") / f"{phase}.md"
    try:
        template = path.read_text(encoding="utf-8")
    except OSError:
        raise KitError(f"phase prompt {path} is missing; restore it from the kit") from None
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values.get(m.group(1), ""), template).rstrip() + "\n"
