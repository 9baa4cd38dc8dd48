"""Where a GCE instance goes: the zones to try in order, and what a refused insert means for
the next attempt.

The zones are GCE_ZONE then GCE_ZONES. For a GPU machine, a zone that does not offer its
accelerator type is skipped (when the accelerator types could be listed). A refusal for
capacity (ZONE_RESOURCE_POOL_EXHAUSTED…) moves on to the next zone, first to the zones GCE names
as having capacity (its errorInfo's zonesAvailable) when they are in a region already
configured; a regional quota (NVIDIA_L4_GPUS in us-central1) skips that region's other zones;
a global one (GPUS_ALL_REGIONS) ends the attempts at once. What could not be done is one line
naming the quota to raise, or the zones to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ...errors import CapacityError, ProviderError

CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED",
                  "RESOURCE_POOL_EXHAUSTED", "STOCKOUT")
# "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1." / "… Limit: 0.0 globally."
_QUOTA = re.compile(r"Quota '([A-Z0-9_]+)' exceeded\.\s+Limit:\s*([\d.]+)(?:\s+in region ([a-z0-9-]+)|\s+globally)?")
QUOTAS_PAGE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"


def request_id(run_id: str, attempt: int) -> str:
    """A UUID per (run, zone attempt): a retried insert is deduplicated by GCE, never doubled."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"researchkit:{run_id}:{attempt}"))


def region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


@dataclass
class Refusal:
    zone: str
    code: str
    quota: str = ""  # the quota exceeded (its metric, as GCE names it in the message)
    limit: str = ""
    quota_region: str = ""  # "" for a global quota
    zones_available: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.quota:
            where = f"in region {self.quota_region}" if self.quota_region else "in all regions"
            return f"{self.zone}: quota {self.quota} exceeded (limit {float(self.limit or 0):g} {where})"
        return f"{self.zone}: {self.code}"


def _as_dict(err) -> dict:
    if isinstance(err, dict):
        return err
    return type(err).to_dict(err, preserving_proto_field_name=False)  # a compute_v1.Errors message


def refusal(exc: BaseException, zone: str) -> Refusal:
    """What a refused insert says (the google.api_core exception behind a CapacityError): its
    code, the quota it names, the zones GCE reports capacity in."""
    out = Refusal(zone, "")
    for err in (_as_dict(e) for e in getattr(exc, "errors", None) or []):
        out.code = out.code or err.get("code") or err.get("reason", "")
        m = _QUOTA.search(err.get("message", ""))
        if m:
            out.quota, out.limit, out.quota_region = m.group(1), m.group(2), m.group(3) or ""
        for detail in err.get("errorDetails", []):
            available = detail.get("errorInfo", {}).get("metadatas", {}).get("zonesAvailable", "")
            out.zones_available += [z.strip() for z in available.split(",") if z.strip()]
            quota = detail.get("quotaInfo", {})
            if quota.get("metricName") and not out.quota:
                out.quota = quota["metricName"].rsplit("/", 1)[-1].upper()
                out.limit, out.quota_region = str(quota.get("limit", "")), quota.get("dimensions", {}).get("region", "")
    out.code = out.code or str(getattr(exc, "message", exc))
    return out


class ZonePlan:
    def __init__(self, zones: list[str], accelerator: str = "", offered: set[str] | None = None):
        self.queue, self.accelerator, self.offered = list(dict.fromkeys(zones)), accelerator, offered
        self.regions = {region(z) for z in self.queue}
        self.tried: list[str] = []
        self.refusals: list[Refusal] = []
        self.skipped: list[str] = []
        self.elsewhere: list[str] = []  # zones with capacity, says GCE, outside the configured regions
        self.blocked: set[str] = set()  # regions whose quota is used up

    def __iter__(self) -> Iterator[str]:
        while self.queue:
            zone = self.queue.pop(0)
            if self.offered is not None and zone not in self.offered:
                self.skipped.append(f"{zone}: no {self.accelerator} there")
            elif region(zone) in self.blocked:
                self.skipped.append(f"{zone}: the quota of {region(zone)} is used up")
            else:
                self.tried.append(zone)
                yield zone

    def refused(self, r: Refusal) -> None:
        self.refusals.append(r)
        if r.quota and not r.quota_region:
            self.queue.clear()  # a global quota: no other zone can help
        elif r.quota:
            self.blocked.add(r.quota_region)
        known = set(self.tried) | set(self.queue)
        nearby = [z for z in r.zones_available if z not in known and region(z) in self.regions]
        self.queue[0:0] = [z for z in nearby if self.offered is None or z in self.offered]
        self.elsewhere += [z for z in r.zones_available if z not in known and z not in nearby]

    def failure(self, what: str, project: str) -> str:
        """One line: why no zone took it, and what to change."""
        why = "; ".join([r.text() for r in self.refusals] + self.skipped)
        quotas = sorted({r.quota for r in self.refusals if r.quota})
        if quotas:
            return (f"GCE quota {', '.join(quotas)} stops {what} ({why}); request more at "
                    f"{QUOTAS_PAGE.format(project=project)} (filter by the quota's name)"
                    + ("" if all(not r.quota_region for r in self.refusals if r.quota) else
                       ", or add zones of other regions to GCE_ZONES"))
        hint = f" (GCE reports capacity in {', '.join(dict.fromkeys(self.elsewhere))})" if self.elsewhere else ""
        return f"no capacity for {what} in {', '.join(self.tried) or 'any zone'} ({why}); add zones to GCE_ZONES{hint} " \
               "or choose another --machine-type"

    def none_offered(self, configured: list[str]) -> str:
        near = sorted(self.offered or (), key=lambda z: (region(z) not in self.regions, z))[:6]
        return (f"none of {', '.join(configured)} offers {self.accelerator}; it is offered in {', '.join(near)}"
                f"{', …' if len(self.offered or ()) > 6 else ''}: set GCE_ZONE or GCE_ZONES to one of them")


@contextmanager
def translate(what: str) -> Iterator[None]:
    """google.api_core errors as ours: capacity and quota refusals as CapacityError (the API's
    exception kept as its cause), the rest as ProviderError naming the problem."""
    from google.api_core import exceptions

    try:
        yield
    except exceptions.GoogleAPICallError as e:
        codes = {(x.get("code") or x.get("reason")) if isinstance(x, dict) else getattr(x, "code", None)
                 for x in e.errors or []}
        text = " ".join(str(getattr(e, "message", None) or e).split())
        capacity = sorted(codes & set(CAPACITY_CODES)) or [c for c in CAPACITY_CODES if c in text]
        if capacity:
            raise CapacityError(capacity[0]) from e
        if isinstance(e, exceptions.NotFound):
            raise ProviderError(f"cannot {what}: not found") from e
        if isinstance(e, exceptions.Forbidden):
            raise ProviderError(f"cannot {what}: permission denied ({text[:120]}); check the project and "
                                "that your account may use Compute Engine") from e
        raise ProviderError(f"cannot {what}: {text[:200]}") from e
