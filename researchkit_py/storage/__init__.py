"""Open a store from its URL. Backends import their SDK only when first used."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import KitError
from .base import ObjectInfo, Store, join_key

__all__ = ["ObjectInfo", "Store", "join_key", "open_store"]


def open_store(url: str) -> Store:
    if not url:
        raise KitError("no bucket configured; set RK_BUCKET (gs://…, s3://… or a directory)")
    if url.startswith(("gs://", "s3://")):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise KitError(f"bucket URL {url!r} has no bucket name; write it as {parsed.scheme}://BUCKET/PREFIX")
        if parsed.scheme == "gs":
            from .gcs import GCSStore

            return GCSStore(parsed.netloc, parsed.path)
        from .s3 import S3Store

        return S3Store(parsed.netloc, parsed.path)
    if "://" in url and not url.startswith("file://"):
        raise KitError(f"unknown bucket URL {url!r}; use gs://, s3:// or file://")
    from .local import LocalStore

    return LocalStore(Path(url.removeprefix("file://")))
