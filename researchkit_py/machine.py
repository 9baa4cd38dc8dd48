"""Which machine a run gets: one answer for preflight, the RUN directive and the launch.

From the most explicit to the least: --machine-type (with the GPUs it carries, or those --gpu
attaches to it); --gpu TYPE[:COUNT] (`none` for no GPU); the spec's compute profile (gpu_type
and gpu_count, else preflight's sizing by memory and hours); the cloud's default machine type.
A GPU model and count map to a machine type through the cloud's table (clouds/<name>/cloud.py);
a count left out means the smallest the cloud offers for that model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .clouds.base import Cloud, GPUShape, Machine
from .clouds.registry import CLOUDS
from .errors import KitError, UsageError, say
from .experiment.spec import Spec, load_spec
from .settings import Settings

NO_GPU = ("", "none", "no", "false", "cpu", "0")
ANY_GPU = ("any", "yes", "true", "gpu")  # a GPU, the cloud's default model
FIELDS = {"compute_type": str, "estimated_rows": (int, float), "model_type": str, "sequential_fits": (int, float),
          "parallelizable": bool, "memory_gb": (int, float), "gpu_type": str, "estimated_wall_hours": (int, float)}
SPEC = "the spec's compute profile"

GPURequest = tuple[str, int | None]  # (model as written, count or None for the smallest offered)


@dataclass
class Recommendation:
    where: str  # local | remote
    machine: Machine
    reason: str


def profile_fields(spec: Spec) -> dict:
    """Every field preflight's sizing reads, checked; a missing or malformed one is a KitError naming it."""
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


def profile_gpu(spec: Spec) -> GPURequest | None:
    """The GPU the profile asks for: gpu_type (a model, or none) and gpu_count; compute_type gpu
    without a model asks for the cloud's default one."""
    profile = spec.profile or {}
    model = str(profile.get("gpu_type") or "").strip()
    count = profile.get("gpu_count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise KitError(f"{spec.path}: compute profile field gpu_count must be a whole number of GPUs, not {count!r}")
    asked = model.lower() not in NO_GPU or str(profile.get("compute_type", "")).lower() == "gpu" or bool(count)
    if not asked or count == 0:
        return None
    return (model if model.lower() not in NO_GPU else "any"), count


def parse_gpu_flag(text: str) -> GPURequest | None:
    """--gpu TYPE[:COUNT]; `none` (None) for no GPU."""
    model, _, count = text.strip().partition(":")
    if model.lower() in NO_GPU:
        return None
    if count and not (count.isdigit() and int(count) > 0):
        raise UsageError(f"--gpu {text}: write it as TYPE or TYPE:COUNT, e.g. L4:2")
    return model, int(count) if count else None


def gpu_model(name: str, cloud: Cloud) -> str:
    """The table's name for a model: 'nvidia-tesla-t4', 'Tesla T4', 't4' → 'T4'; 'A100 80GB' → 'A100-80GB'."""
    models = list(dict.fromkeys(g.gpu for g in cloud.gpus))
    if name.lower() in ANY_GPU and cloud.shapes:
        return cloud.shapes.gpu
    key = re.sub(r"^(nvidia-)?(tesla-)?", "", re.sub(r"[\s_]+", "-", name.strip().lower()))
    key = {"a100-40gb": "a100", "h100-80gb": "h100", "a10": "a10g"}.get(key, key)
    for model in models:
        if model.lower() == key:
            return model
    raise KitError(f"{cloud.title} has no {name} GPU in researchkit's table; use one of {', '.join(models)}, "
                   "or name the machine type with --machine-type")


def gpu_shape(cloud: Cloud, request: GPURequest) -> GPUShape:
    model = gpu_model(request[0], cloud)
    shapes = [s for s in cloud.gpus if s.gpu == model and not (request[1] and s.count != request[1])]
    if not shapes:
        counts = ", ".join(str(s.count) for s in cloud.gpus if s.gpu == model)
        raise KitError(f"{cloud.title} offers {model} GPUs {counts} at a time, not {request[1]}; ask for one of those")
    return min(shapes, key=lambda s: s.count)


def _of(shape: GPUShape, source: str) -> Machine:
    return Machine(shape.machine_type, shape.gpu, shape.count, shape.accelerator, shape.attach, source)


def default_machine_type(cloud: Cloud, settings: Settings) -> str:
    return settings.text(cloud.machine_setting, cloud.defaults.get(cloud.machine_setting, ""))


def recommend(spec: Spec, settings: Settings, cloud: Cloud) -> Recommendation:
    """Preflight's answer for a spec: its GPU, or a machine sized by memory and hours."""
    request = profile_gpu(spec)
    if request:
        machine = _of(gpu_shape(cloud, request), SPEC)
        return Recommendation("remote", machine, f"it needs a GPU ({machine.gpu_text()})")
    return sized(spec, settings, cloud)


def sized(spec: Spec, settings: Settings, cloud: Cloud) -> Recommendation:
    """A machine without GPU for the spec's memory and hours (or this machine, when it fits)."""
    assert cloud.shapes is not None
    p = profile_fields(spec)
    local_gb = settings.number("RK_LOCAL_MEMORY_GB", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    local_hours = settings.number("RK_LOCAL_MAX_HOURS")
    hours = float(p["estimated_wall_hours"])
    if p["memory_gb"] > 0.8 * local_gb:
        where, itype = "remote", cloud.shapes.memory_large
        reason = f"{p['memory_gb']:g} GB of memory is more than this machine can spare ({local_gb:.0f} GB)"
    elif hours > local_hours:
        where, itype = "remote", cloud.shapes.cpu_large if p["parallelizable"] else cloud.shapes.cpu_small
        reason = (f"~{hours:g} h exceeds the {local_hours:g} h local limit (RK_LOCAL_MAX_HOURS)"
                  + ("; parallelizable, so many cores pay off" if p["parallelizable"] else ""))
    else:
        where, itype = "local", cloud.shapes.cpu_small
        reason = f"~{hours:g} h on CPU with {p['memory_gb']:g} GB fits this machine"
    return Recommendation(where, Machine(itype, source=SPEC), reason)


def choose(cloud_name: str, settings: Settings, *, machine_type: str = "", gpu: str | None = None,
           spec: str | Path = "") -> Machine:
    """The machine of a launch (see the module's docstring). `gpu` None: no --gpu given; `spec`:
    the spec the run belongs to (a path that is not a file only names the run)."""
    cloud = CLOUDS[cloud_name]
    request, source = (parse_gpu_flag(gpu), "--gpu") if gpu is not None else (None, "")
    loaded = load_spec(spec) if spec and Path(spec).is_file() else None
    if gpu is None and loaded is not None:
        request, source = profile_gpu(loaded), SPEC
    if not cloud.gpus:  # the embedded provider runs on this machine: --gpu asks it to check its GPU
        if request and source == "--gpu":
            return Machine("", request[0].upper(), request[1] or 1, source=source)
        return Machine(source="this machine")
    if machine_type:
        return _explicit(cloud, machine_type, request, source)
    if request:
        return _of(gpu_shape(cloud, request), source)
    if loaded is not None and loaded.profile is not None:
        try:
            rec = sized(loaded, settings, cloud)
        except KitError as e:
            say(f"researchkit: {e}; {cloud.title} runs on its default machine type")
        else:
            if rec.where == "remote":
                return rec.machine
    return Machine(default_machine_type(cloud, settings), source=f"the default ({cloud.machine_setting})")


def _explicit(cloud: Cloud, machine_type: str, request: GPURequest | None, source: str) -> Machine:
    """--machine-type: the GPUs it carries, or those a request attaches to it (GCE N1)."""
    built_in = [s for s in cloud.gpus if s.machine_type == machine_type and not s.attach]
    if built_in:
        shape = built_in[0]
        if request and source == "--gpu" and (gpu_model(request[0], cloud), request[1] or shape.count) != (
                shape.gpu, shape.count):
            raise UsageError(f"--machine-type {machine_type} carries {shape.count} × {shape.gpu}, not --gpu "
                             f"{request[0]}; give one of the two")
        return _of(shape, "--machine-type")
    if re.match(cloud.gpu_machine_types, machine_type):  # a GPU type beyond the table: at least one GPU
        return Machine(machine_type, "GPU", 1, source="--machine-type")
    if request:
        wanted = gpu_shape(cloud, request)
        family = machine_type.split("-")[0]
        if wanted.attach and wanted.machine_type.split("-")[0] == family:
            return Machine(machine_type, wanted.gpu, wanted.count, wanted.accelerator, True, "--machine-type and " + source)
        if source == "--gpu":
            raise UsageError(f"--machine-type {machine_type} has no GPU and {wanted.gpu} cannot be attached to it; "
                             f"drop --machine-type ({wanted.machine_type} carries {wanted.count} × {wanted.gpu})")
        say(f"researchkit: {SPEC} asks for {wanted.count} × {wanted.gpu} but --machine-type {machine_type} has no "
            "GPU: the run gets none")
    return Machine(machine_type, source="--machine-type")

