"""What a refused RunInstances means for the next attempt on EC2, and the quota to raise.

InsufficientInstanceCapacity (and its kin) moves on to the next subnet, or market; its message
names the Availability Zones that have capacity now ("… or choosing us-east-1b, us-east-1c."),
which a launch into the default VPC tries next. VcpuLimitExceeded on an on-demand launch is the
account's vCPU quota for the instance family: no other subnet can help, so it ends the launch
with the quota's name and where to raise it. Spot's own quota (MaxSpotInstanceCountExceeded, or
VcpuLimitExceeded on a spot request) falls back to on-demand.
"""

from __future__ import annotations

import re

CAPACITY_CODES = ("InsufficientInstanceCapacity", "InstanceLimitExceeded", "InsufficientCapacity", "SpotMaxPriceTooLow",
                  "MaxSpotInstanceCountExceeded", "Unsupported", "InsufficientFreeAddressesInSubnet",
                  "VcpuLimitExceeded")
# The vCPU quotas (name, Service Quotas code) of the families researchkit launches, by a pattern
# of their instance types: (on-demand, spot)
QUOTAS = {r"(g|gr|vt)\d": (("Running On-Demand G and VT instances", "L-DB2E81BA"),
                          ("All G and VT Spot Instance Requests", "L-3819A6DF")),
          r"p\d": (("Running On-Demand P instances", "L-417A185B"), ("All P Spot Instance Requests", "L-7212CCBC")),
          r"[acdhimrtz]\d": (("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", "L-1216C47A"),
                             ("All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", "L-34B43A08"))}
_ZONES = re.compile(r"choosing ((?:[a-z]{2}-[a-z]+-\d[a-z](?:, | or |, or )?)+)")


def suggested_zones(message: str) -> list[str]:
    """The Availability Zones an InsufficientInstanceCapacity message says have capacity."""
    m = _ZONES.search(message)
    return re.findall(r"[a-z]{2}-[a-z]+-\d[a-z]", m.group(1)) if m else []


def quota_line(instance_type: str, spot: bool, region: str) -> str:
    """One line: the vCPU quota that stops this instance type, and where to raise it."""
    page = f"https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas"
    for pattern, quotas in QUOTAS.items():
        if re.match(pattern, instance_type):
            name, code = quotas[spot]
            return f"EC2 quota '{name}' ({code}) is too low for {instance_type} in {region}: request more at {page}/{code}"
    return (f"EC2's vCPU quota for {instance_type}'s family is too low in {region}: request more at {page} "
            f"({'spot' if spot else 'on-demand'})")
