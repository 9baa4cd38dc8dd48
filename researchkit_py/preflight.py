"""tools/preflight: from a spec's compute profile and budget, recommend where RUN should go.

Reads the `### Compute Profile` YAML (compute_type, estimated_rows, model_type,
sequential_fits, parallelizable, memory_gb, gpu_type, estimated_wall_hours; gpu_count when
more than one GPU) and the `## Budget` lines (max_gpu_hours, max_cost_usd); prints local or
remote, backend, instance type and GPUs, estimated and worst-case cost (price × max hours) and
the reason. `cloud-run run --spec` launches the same machine (researchkit_py/machine.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .argv import ArgumentParser
from .clouds.registry import CLOUDS, deadline_hours, price_per_hour, target
from .errors import KitError, run_cli
from .experiment.spec import load_spec
from .machine import profile_fields, recommend
from .settings import Settings


@dataclass
class Advice:
    spec: str
    where: str  # local | remote
    backend: str
    instance_type: str
    gpu: str  # the GPU model ("" for none)
    gpu_count: int
    estimated_hours: float
    max_hours: float
    price_per_hour: float
    estimated_cost_usd: float
    worst_case_cost_usd: float
    reason: str
    over_budget: bool

    def text(self, machine: str) -> str:
        head = (f"## Compute Advisory (preflight)\nRecommendation: {self.where.upper()}"
                + (f" on {self.backend} {machine}" if self.where == "remote" else ""))
        cost = (f"Estimated {self.estimated_hours:g} h → ${self.estimated_cost_usd:.2f}; worst case "
                f"{self.max_hours:g} h × ${self.price_per_hour:.2f}/h = ${self.worst_case_cost_usd:.2f}."
                if self.where == "remote" else f"Estimated {self.estimated_hours:g} h here: no cloud cost.")
        warn = "\nWARNING: the worst case exceeds the spec's max_cost_usd." if self.over_budget else ""
        return f"{head}\nReason: {self.reason}\n{cost}{warn}"


def advise(spec_path: str, settings: Settings, max_hours: float | None = None,
           backend: str | None = None) -> tuple[Advice, str]:
    """The advice, and how its machine is named (`g2-standard-4 (1 × L4)`)."""
    spec = load_spec(spec_path)
    p = profile_fields(spec)
    named = target(settings["COMPUTE_TARGET"]).cloud
    backend = backend or (named if named and CLOUDS[named].shapes else settings["RK_PREFLIGHT_BACKEND"])
    if backend not in CLOUDS or CLOUDS[backend].shapes is None:
        priced = ", ".join(name for name, c in CLOUDS.items() if c.shapes)
        raise KitError(f"preflight knows instance types for {priced}, not {backend!r}")
    rec = recommend(spec, settings, CLOUDS[backend])
    remote = rec.where == "remote"
    hours = float(p["estimated_wall_hours"])
    limit = max_hours if max_hours is not None else deadline_hours(
        settings, spec.budget.get("max_gpu_hours") or spec.budget.get("max_hours"))
    price = price_per_hour(backend, rec.machine, settings) if remote else 0.0
    est, worst = price * hours, price * limit
    max_cost = spec.budget.get("max_cost_usd")
    over = bool(max_cost) and remote and worst > float(str(max_cost).lstrip("$"))
    m = rec.machine
    advice = Advice(str(spec_path), rec.where, backend if remote else "local", m.machine_type if remote else "",
                    m.gpu, m.gpu_count, hours, limit, price, round(est, 2), round(worst, 2), rec.reason, over)
    return advice, m.describe()


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="preflight", description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-hours", type=float)
    ap.add_argument("--backend", choices=[name for name, c in CLOUDS.items() if c.shapes])
    args = ap.parse_args(argv)
    advice, machine = advise(args.spec, Settings(), args.max_hours, args.backend)
    print(json.dumps(asdict(advice), indent=2) if args.json else advice.text(machine))
    return 0


if __name__ == "__main__":
    run_cli("preflight", main)
