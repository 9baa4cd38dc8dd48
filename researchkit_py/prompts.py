"""Phase prompts (prompts/<phase>.md) and the compute directive injected into RUN."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import KitError

KIT_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("survey", "frame", "run", "read", "log", "synthesize")
CLOUD_TARGETS = {"ec2": ("EC2", "ec2", "on EC2"), "gce": ("GCE", "gce", "on a GCE VM"),
                 "sandbox": ("SANDBOX", "local", "through cloud-run on the embedded sandbox provider")}
TARGETS = ("local", *CLOUD_TARGETS)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise KitError(f"COMPUTE_TARGET={target!r} is not one of {', '.join(TARGETS)}; fix it in .orchestration-kit.env")
    return target


def compute_directive(target: str, *, okit: str, spec: str, results: str, command: str,
                      data_dir: str | None, max_hours: str) -> str:
    """The seed's mandatory directive, for each cloud target; empty for local."""
    if check_target(target) == "local":
        return ""
    label, backend, where = CLOUD_TARGETS[target]
    data = f"      --data-dirs {data_dir}/ \\\n" if data_dir else ""
    run = command.replace('"', '\\"') if command and "\n" not in command else "python <your-script>"
    return f"""
## Compute Directive (MANDATORY — {label})
ALL training and heavy computation MUST run {where}. Do NOT run model training locally.

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
