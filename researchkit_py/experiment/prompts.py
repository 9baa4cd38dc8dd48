"""Phase prompts (prompts/<phase>.md) and the compute directive injected into RUN."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..clouds.registry import target as compute_target
from ..errors import KitError

KIT_ROOT = Path(__file__).resolve().parents[2]
PHASES = ("survey", "frame", "run", "read", "log", "synthesize")


def compute_directive(target: str, *, okit: str, spec: str, results: str, command: str,
                      data_dir: str | None, max_hours: str, machine: str = "") -> str:
    """The mandatory directive (orchestration-kit's wording), for each cloud target; empty for
    local. Its command block needs no quoting of the experiment's command: `cloud-run run
    --spec` takes it from the spec's `## Run` block; every path in it is shell-quoted, so the
    block runs as written when pasted into bash (tests/py/test_directive.py pastes it).
    `machine`: what the launch will get (machine.choose), said before the command."""
    t = compute_target(target)
    if t.cloud is None:
        return ""
    q = shlex.quote
    tool, out = q(f"{okit}/tools/cloud-run"), q(f"{results}/")
    args = [f"--backend {t.cloud}", f"--spec {q(spec)}", *([f"--data-dirs {q(data_dir + '/')}"] if data_dir else []),
            f"--output-dir {out}", f"--max-hours {max_hours}"]
    block = f"  {tool} run \\\n" + " \\\n".join(f"      {a}" for a in args)
    shown = q(command) if command else "(none yet: the spec has no command in a ``` block under '## Run')"
    machine_line = f"The machine: {machine} (cloud-run picks it from --spec).\n" if machine else ""
    return f"""
## Compute Directive (MANDATORY — {t.label})
ALL training and heavy computation MUST run {t.where}. Do NOT run model training locally.
{machine_line}
Use cloud-run to execute the experiment:
{block}

Paste that command into the shell exactly as it is. cloud-run takes the experiment's command
from the spec's `## Run` block and runs it on the VM, where $RESULTS_DIR is set:
{shown}

IMPORTANT:
- Do NOT use --detach. Wait for the run to complete.
- After cloud-run finishes, pull results:
    {tool} pull --backend {t.cloud} "$(cat {q(f"{results}/.cloud-run-id")})" --output-dir {out}
- Write the cloud-run run-id to {results}/.cloud-run-id (cloud-run run writes it for you).
- Verify metrics.json exists in {results}/ before exiting.
- You may run the MVE (minimal viable experiment) locally for fast iteration,
  but the FULL experiment (all splits, all configs) MUST run {t.where}.
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
