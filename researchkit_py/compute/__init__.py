"""Compute providers behind one interface; each backend's SDK is imported only when used."""

from __future__ import annotations

import importlib

from ..config import Settings
from ..errors import UsageError
from .base import Instance, InstanceRequest, Provider

__all__ = ["Instance", "InstanceRequest", "Provider", "PROVIDERS", "get_provider"]

PROVIDERS = {
    "local": "researchkit_py.compute.local:LocalProvider",
    "gce": "researchkit_py.compute.gce:GCEProvider",
    "ec2": "researchkit_py.compute.ec2:EC2Provider",
}


def get_provider(name: str, settings: Settings) -> Provider:
    if name not in PROVIDERS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(PROVIDERS))}")
    module, _, cls = PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(settings)
