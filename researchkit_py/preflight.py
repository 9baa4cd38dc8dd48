"""tools/preflight: from a spec's compute profile and budget, recommend where RUN should go.

Reads the `### Compute Profile` YAML (compute_type, estimated_rows, model_type,
sequential_fits, parallelizable, memory_gb, gpu_type, estimated_wall_hours) and the
`## Budget` lines (max_gpu_hours, max_cost_usd); prints local or remote, backend, instance
type, estimated and worst-case cost (price × max hours) and the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from .argv import ArgumentParser
from .clouds.registry import CLOUDS, deadline_hours, price_per_hour, target
from .errors import KitError, run_cli
from .experiment.spec import load_spec
from .settings import Settings

FIELDS = {"compute_type": str, "estimated_rows": (int, float), "model_type": str, "sequential_fits": (int, float),
          "parallelizable": bool, "memory_gb": (int, float), "gpu_type": str, "estimated_wall_hours": (int, float)}


@dataclass
class Advice:
    spec: str
    where: str  # local | remote
    backend: str
    instance_type: str
    estimated_hours: float
    max_hours: float
    price_per_hour: float
    estimated_cost_usd: float
    worst_case_cost_usd: float
    reason: str
    over_budget: bool

    def text(self) -> str:
        head = (f"## Compute Advisory (preflight)\nRecommendation: {self.where.upper()}"
                + (f" on {self.backend} {self.instance_type}" if self.where == "remote" else ""))
        cost = (f"Estimated {self.estimated_hours:g} h → ${self.estimated_cost_usd:.2f}; worst case "
                f"{self.max_hours:g} h × ${self.price_per_hour:.2f}/h = ${self.worst_case_cost_usd:.2f}."
                if self.where == "remote" else f"Estimated {self.estimated_hours:g} h here: no cloud cost.")
        warn = "\nWARNING: the worst case exceeds the spec's max_cost_usd." if self.over_budget else ""
        return f"{head}\nReason: {self.reason}\n{cost}{warn}"


def profile_fields(spec) -> dict:
    if spec.profile is None:
        raise KitError(f"{spec.path}: needs {spec.profile_error or 'a compute profile'}")
    out = {}
    for name, kind in FIELDS.items():
        value = spec.profile.get(name)
        if value is None:
            raise KitError(f"{spec.path}: compute profile field {name} is missing")
        if kind is bool and isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
            value = value.lower() in ("yes", "true")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise KitError(f"{spec.path}: compute profile field {name} must be a {getattr(kind, '__name__', 'number')}, "
                           f"not {value!r}")
        out[name] = value
    return out


def advise(spec_path: str, settings: Settings, max_hours: float | None = None, backend: str | None = None) -> Advice:
    spec = load_spec(spec_path)
    p = profile_fields(spec)
    named = target(settings["COMPUTE_TARGET"]).cloud
    backend = backend or (named if named and CLOUDS[named].shapes else settings["RK_PREFLIGHT_BACKEND"])
    shapes = CLOUDS[backend].shapes if backend in CLOUDS else None
    if shapes is None:
        priced = ", ".join(name for name, c in CLOUDS.items() if c.shapes)
        raise KitError(f"preflight knows instance types for {priced}, not {backend!r}")
    small, big, mem, gpu_small, gpu_big = (shapes.cpu_small, shapes.cpu_large, shapes.memory_large,
                                           shapes.gpu_small, shapes.gpu_large)
    local_gb = settings.number("RK_LOCAL_MEMORY_GB", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    local_hours = settings.number("RK_LOCAL_MAX_HOURS")
    hours = float(p["estimated_wall_hours"])
    gpu = p["compute_type"].lower() == "gpu" or p["gpu_type"].lower() not in ("none", "", "no")
    if gpu:
        where, itype = "remote", gpu_big if hours > 4 or p["memory_gb"] > 64 else gpu_small
        reason = f"it needs a GPU ({p['gpu_type']})"
    elif p["memory_gb"] > 0.8 * local_gb:
        where, itype = "remote", mem
        reason = f"{p['memory_gb']:g} GB of memory is more than this machine can spare ({local_gb:.0f} GB)"
    elif hours > local_hours:
        where, itype = "remote", big if p["parallelizable"] else small
        reason = (f"~{hours:g} h exceeds the {local_hours:g} h local limit (RK_LOCAL_MAX_HOURS)"
                  + ("; parallelizable, so many cores pay off" if p["parallelizable"] else ""))
    else:
        where, itype = "local", small
        reason = f"~{hours:g} h on CPU with {p['memory_gb']:g} GB fits this machine"
    limit = max_hours if max_hours is not None else deadline_hours(
        settings, spec.budget.get("max_gpu_hours") or spec.budget.get("max_hours"))
    price = price_per_hour(backend, itype, settings) if where == "remote" else 0.0
    est, worst = price * hours, price * limit
    max_cost = spec.budget.get("max_cost_usd")
    over = bool(max_cost) and where == "remote" and worst > float(str(max_cost).lstrip("$"))
    return Advice(str(spec_path), where, backend if where == "remote" else "local", itype if where == "remote" else "",
                  hours, limit, price, round(est, 2), round(worst, 2), reason, over)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="preflight", description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-hours", type=float)
    ap.add_argument("--backend", choices=[name for name, c in CLOUDS.items() if c.shapes])
    args = ap.parse_args(argv)
    advice = advise(args.spec, Settings(), args.max_hours, args.backend)
    print(json.dumps(asdict(advice), indent=2) if args.json else advice.text())
    return 0


if __name__ == "__main__":
    run_cli("preflight", main)
