"""The registry: every cloud the kit knows, the COMPUTE_TARGET values that name them, and
the one way to get a cloud's provider or a bucket's store.

Adding a cloud: a folder beside local/, gce/ and ec2/ (its `CLOUD` descriptor in cloud.py,
provider, store, VM pieces), and its line in CLOUDS below. Each provider's SDK is imported
only when that provider or store is first used.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

from ..errors import KitError, UsageError
from ..settings import Settings
from .base import Cloud, Machine, Provider
from .ec2.cloud import CLOUD as EC2
from .gce.cloud import CLOUD as GCE
from .local.cloud import CLOUD as LOCAL

CLOUDS: dict[str, Cloud] = {c.name: c for c in (LOCAL, EC2, GCE)}


@dataclass(frozen=True)
class Target:
    """A COMPUTE_TARGET: where RUN executes. `cloud` is None for this machine, outside cloud-run."""

    name: str
    cloud: str | None
    label: str = ""  # in the RUN directive's heading
    where: str = ""


TARGETS: dict[str, Target] = {
    "local": Target("local", None),
    **{c.name: Target(c.name, c.name, c.title, c.where) for c in CLOUDS.values() if c.name != "local"},
    "sandbox": Target("sandbox", "local", "SANDBOX", "through cloud-run on the embedded sandbox provider"),
}


def target(name: str) -> Target:
    try:
        return TARGETS[name or "local"]
    except KeyError:
        raise KitError(f"COMPUTE_TARGET={name} is not one of {', '.join(TARGETS)}; "
                       "fix it in .orchestration-kit.env or the environment") from None


def cloud_for(settings: Settings, backend: str | None = None) -> Cloud:
    """The cloud cloud-run uses: --backend > RK_BACKEND > what COMPUTE_TARGET names (the
    embedded provider for local)."""
    name = backend or settings.get("RK_BACKEND") or target(settings["COMPUTE_TARGET"]).cloud or "local"
    if name not in CLOUDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(CLOUDS))}")
    return CLOUDS[name]


# The deadlines every provider can enforce, in seconds: GCE's scheduling.maxRunDuration takes
# 30 s to 120 days ("Limit the run time of a VM", Compute Engine documentation). EC2 and the
# embedded provider could do shorter or longer, but a run that works on one target must work
# on the others: the sandbox rehearses the cloud.
DEADLINE_RANGE = (30, 120 * 86400)


def deadline_hours(settings: Settings, spec_budget: str | float | None = None) -> float:
    """settings.max_hours(spec_budget), refused (naming where it came from) outside DEADLINE_RANGE."""
    hours = settings.max_hours(spec_budget)
    source, raw = settings.source("MAX_GPU_HOURS"), settings["MAX_GPU_HOURS"]
    if source == "default" and spec_budget:
        what = f"the spec's max_gpu_hours {spec_budget}"
    else:
        what = f"--max-hours {raw}" if source == "flag" else f"MAX_GPU_HOURS={raw} ({source})"
    error = UsageError if source == "flag" else KitError
    low, high = DEADLINE_RANGE
    if hours <= 0:
        raise error(f"{what} must be positive")
    if not low <= hours * 3600 <= high:
        raise error(f"{what} is {hours * 3600:g} s; a run's deadline must be between {low} s (GCE's shortest "
                    f"maxRunDuration, applied on every provider) and {high // 86400} days (its longest): "
                    f"use {math.ceil(low / 3600 * 1e4) / 1e4:g} to {high // 3600} hours")
    return hours


def check_bucket(url: str, cloud: Cloud, settings: Settings, backend: str | None = None) -> None:
    """Refuse a bucket the run's VMs could not use, or one that says another cloud was meant.

    A cloud's VMs reach only their own cloud's buckets (no credentials travel to them). The
    embedded provider can use any bucket, but only when it was chosen (--backend local,
    RK_BACKEND=local, COMPUTE_TARGET=sandbox): by default, a gs:// or s3:// bucket means the
    user meant that cloud (e.g. after `source`-ing scripts/emulate without COMPUTE_TARGET)."""
    owner = store_cloud(url)
    if owner.name == cloud.name:
        return
    chosen = backend or settings.get("RK_BACKEND") or target(settings["COMPUTE_TARGET"]).cloud
    if cloud.name == "local" and chosen:
        return
    if cloud.name == "local":
        raise KitError(f"RK_BUCKET={url} belongs to {owner.title}, but with COMPUTE_TARGET={settings['COMPUTE_TARGET']} "
                       f"cloud-run launches on the embedded provider; set COMPUTE_TARGET={owner.name}, or pass "
                       "--backend local to use the embedded provider with that bucket")
    where = f"belongs to {owner.title}" if owner.scheme else "is a directory on this machine"
    raise KitError(f"RK_BUCKET={url} {where}, which {cloud.title} VMs cannot reach; set RK_BUCKET to one of "
                   f"its {cloud.scheme}:// buckets, or COMPUTE_TARGET to {owner.name if owner.scheme else 'sandbox'}")


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_provider(name: str, settings: Settings) -> Provider:
    if name not in CLOUDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(CLOUDS))}")
    return _load(CLOUDS[name].provider)(settings)


def store_cloud(url: str) -> Cloud:
    """The cloud whose store serves this bucket URL (a directory: the embedded one)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "file":
        scheme = ""
    for cloud in CLOUDS.values():
        if cloud.scheme == scheme:
            return cloud
    schemes = ", ".join(f"{c.scheme}://" for c in CLOUDS.values() if c.scheme)
    raise KitError(f"unknown bucket URL {url!r}; use {schemes} or file://")


def open_store(url: str, settings: Settings | None = None):
    if not url:
        raise KitError("no bucket configured; set RK_BUCKET (gs://…, s3://… or a directory)")
    return _load(store_cloud(url).store).open_url(url, settings or Settings(read_file=False))


def price_per_hour(cloud: str, machine: Machine, settings: Settings) -> float:
    """RK_PRICE_PER_HOUR, else the cloud's built-in tables: the machine type and any GPUs
    attached to it (approximate: for comparing and capping)."""
    if settings.get("RK_PRICE_PER_HOUR"):
        return settings.number("RK_PRICE_PER_HOUR")
    c = CLOUDS[cloud]
    if not c.prices:
        return 0.0  # the embedded provider costs nothing
    what = machine.machine_type + (f" with {machine.gpu_text()}" if machine.attach else "")
    try:
        price = c.prices[machine.machine_type]
        if machine.attach:
            price += machine.gpu_count * c.accelerator_prices[machine.accelerator]
    except KeyError:
        raise KitError(f"no price known for {what} on {cloud}; set RK_PRICE_PER_HOUR to its hourly price") from None
    return round(price, 4)
