"""What every lifecycle operation works with: the settings, the provider and the bucket."""

from __future__ import annotations

from dataclasses import dataclass

from ..clouds.base import Provider
from ..clouds.registry import check_bucket, cloud_for, get_provider, open_store
from ..settings import Settings
from ..storage import Store


@dataclass
class Context:
    settings: Settings
    provider: Provider
    store: Store
    default_bucket: bool = False  # the provider's own bucket (created on first launch), not RK_BUCKET

    @classmethod
    def open(cls, settings: Settings, backend: str | None = None) -> Context:
        cloud = cloud_for(settings, backend)
        bucket = settings.get("RK_BUCKET")
        if bucket:
            check_bucket(bucket, cloud, settings, backend)
        provider = get_provider(cloud.name, settings)
        store = open_store(bucket or provider.default_store_url(), settings)
        return cls(settings, provider, store, default_bucket=not bucket)

    @property
    def embedded(self) -> bool:
        return self.provider.name == "local"

    def poll_seconds(self) -> float:
        return self.settings.number("RK_POLL_SECONDS", 0.2 if self.embedded else 2.0)
