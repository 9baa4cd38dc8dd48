"""RUN's time budget, and on a cloud target the run's deadline: one number for both.

On a cloud target the number is the run's deadline H (`--max-hours` in the directive,
MAX_GPU_HOURS, the spec's max_gpu_hours, 4 h): the VM is deleted H after its launch whatever
happens, and RUN's budget is H plus MARGIN, the agent's time to launch and to pull. Set,
EXP_TIME_BUDGET caps it: H becomes at most EXP_TIME_BUDGET − MARGIN. Either way the VM's
deadline comes before the budget, and a budget that stops the agent first stops the run with
it (the agent's process group gets TERM: an attached cloud-run cancels its run). Locally,
nothing bounds the run but the budget: EXP_TIME_BUDGET, else twice the estimate (at least
600 s), else EXP_PHASE_BUDGET.
"""

from __future__ import annotations

import math

from ..clouds.registry import DEADLINE_RANGE, deadline_hours, target
from ..errors import KitError
from ..settings import Settings
from .spec import Spec

MARGIN = 900  # seconds: the agent reads its directive, launches, and pulls


def run_limits(settings: Settings, spec: Spec, compute_target: str) -> tuple[int, float | None]:
    """(RUN's budget in seconds, the run's deadline in hours on a cloud target, else None)."""
    if target(compute_target).cloud is None:
        est = spec.estimated_hours
        default = max(600, int(est * 3600 * 2)) if est else settings.integer("EXP_PHASE_BUDGET")
        return settings.integer("EXP_TIME_BUDGET", default), None
    hours = deadline_hours(settings, spec.budget.get("max_gpu_hours"))
    if settings.get("EXP_TIME_BUDGET"):
        budget = settings.integer("EXP_TIME_BUDGET")
        capped = budget - MARGIN
        if capped < DEADLINE_RANGE[0]:
            raise KitError(f"EXP_TIME_BUDGET={budget} leaves a cloud run {capped} s after the {MARGIN} s RUN keeps to "
                           f"launch and pull; set it to at least {MARGIN + DEADLINE_RANGE[0]}, or unset it "
                           "(the budget then follows MAX_GPU_HOURS)")
        hours = min(hours, capped / 3600)
    return math.ceil(hours * 3600) + MARGIN, hours
