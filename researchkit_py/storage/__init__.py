"""What every bucket offers (base.Store), untrusted keys kept inside their target (paths),
and whole trees moved in parallel (transfer). The backends live with their clouds
(clouds/*/store.py); clouds.open_store opens one from its URL."""

from .base import ObjectInfo, Store, join_key

__all__ = ["ObjectInfo", "Store", "join_key"]
