"""The storage interface every backend implements, plus the retry policy they share.

A Store is opened at a URL (`gs://bucket/prefix`, `s3://bucket/prefix`, `file:///dir`);
keys are relative to that prefix, always with forward slashes.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import KitError, NotFound, StorageError, retry
from ..settings import Settings
from .parallel import OffsetWriter

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    md5: str | None  # hex; None when the backend cannot tell (e.g. S3 multipart ETag)


class Store(ABC):
    """A bucket at a URL. Its transfer options come from the settings it was opened with:
    retries and backoff (RK_STORAGE_RETRIES, RK_STORAGE_BACKOFF), parallel transfers
    (RK_TRANSFER_THREADS) and whether a progress bar may show (RK_NO_PROGRESS)."""

    url: str
    # A run's log shorter than this grows as chunks beside it (protocol.LOG_CHUNKS): S3 appends
    # by copying the log as a part, and a part but the last is at least 5 MiB. 0: never.
    log_chunk_limit = 0

    @classmethod
    def open_url(cls, url: str, settings: Settings) -> Store:
        """The store at `scheme://bucket/prefix` (bucket stores; a directory store overrides this)."""
        parsed = urlparse(url)
        if not parsed.netloc:
            raise KitError(f"bucket URL {url!r} has no bucket name; write it as {parsed.scheme}://BUCKET/PREFIX")
        return cls(parsed.netloc, parsed.path, settings)  # type: ignore[call-arg]

    def __init__(self, settings: Settings):
        self.settings = settings
        self.retries = settings.integer("RK_STORAGE_RETRIES")
        self.backoff = settings.number("RK_STORAGE_BACKOFF")
        # Beyond a few threads per core a Python client loses more to lock contention than it
        # gains in overlap (bench/: 4 threads pulled 2,000 files faster than 16 on 2 cores).
        self.threads = settings.integer("RK_TRANSFER_THREADS", min(16, 4 * (os.cpu_count() or 1)))
        self.progress = not settings.flag("RK_NO_PROGRESS")

    # --- what each backend implements -------------------------------------------------
    @abstractmethod
    def _put_file(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def _get_file(self, key: str, local: Path) -> None:
        """Write the object to `local` (which the caller makes atomic); NotFound if absent."""

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def _get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list_dirs(self, prefix: str) -> Iterator[str]:
        """Names of the 'directories' directly under prefix/ (one delimiter listing)."""

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (ConnectionError, TimeoutError))

    # --- the public operations: retried, errors translated ----------------------------
    def put_file(self, local: Path, key: str) -> None:
        self._retry(lambda: self._put_file(Path(local), key), f"upload {key}")

    def get_file(self, key: str, local: Path) -> None:
        self._retry(lambda: self._get_file(key, Path(local)), f"download {key}")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retry(lambda: self._put_bytes(key, data), f"write {key}")

    def get_bytes(self, key: str) -> bytes:
        return self._retry(lambda: self._get_bytes(key), f"read {key}")

    def get_range(self, key: str, start: int, end: int) -> bytes:
        data = self._retry(lambda: self._get_range(key, start, end), f"read {key}")
        if len(data) != end - start:
            raise StorageError(f"{self.url}/{key} is shorter than its manifest says; the run record is damaged")
        return data

    def get_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        """Bytes [start, end) of the object, streamed to the same offsets of the open file `fd`:
        one piece of a big file, whose pieces come down side by side (storage/parallel.py)."""
        def once() -> None:
            sink = OffsetWriter(fd, start)
            self._get_range_into(key, start, end, sink)
            if sink.written != end - start:
                raise StorageError(f"{self.url}/{key} is shorter than its listing says; pull again")
        self._retry(once, f"download {key}")

    def _get_range_into(self, key: str, start: int, end: int, sink: OffsetWriter) -> None:
        sink.write(self._get_range(key, start, end))

    def append_file(self, local: Path, key: str, start: int, end: int) -> None:
        """Make the object `key`, which holds the first `start` bytes of `local` (a log that only
        grows), hold its first `end`. Backends that can send only the new bytes (GCS: compose;
        S3: a multipart copy; a directory: an append); the others send all `end` again. Safe to
        repeat: an object already `end` long stays as it is; one of another length is replaced."""
        self._retry(lambda: self._append_file(Path(local), key, start, end), f"append to {key}")

    def _append_file(self, local: Path, key: str, start: int, end: int) -> None:
        with open(local, "rb") as f:
            self._put_bytes(key, f.read(end))

    def get_tail(self, key: str, start: int) -> bytes:
        """The object's bytes from `start` on (b"" when it is no longer): what a follower has not
        seen yet. NotFound if there is no object."""
        return self._retry(lambda: self._get_tail(key, start), f"read {key}")

    def _get_tail(self, key: str, start: int) -> bytes:
        return self._get_bytes(key)[start:]

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self._retry(lambda: list(self._list(prefix)), f"list {prefix or '/'}")

    def list_dirs(self, prefix: str) -> list[str]:
        return self._retry(lambda: sorted(self._list_dirs(prefix.strip("/"))), f"list {prefix}/")

    def delete(self, key: str) -> None:
        self._retry(lambda: self._delete(key), f"delete {key}")

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))

    def read_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StorageError(f"{self.url}/{key} is not valid JSON ({e}); the run record is damaged") from e

    def read_json_or_none(self, key: str) -> Any:
        try:
            return self.read_json(key)
        except NotFound:
            return None

    def write_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def watch(self, keys: list[str]) -> Callable[[float], None]:
        """A pause of up to `seconds` between two reads of `keys`, ended early by a store that can
        see them change (a directory: the embedded provider's); a cloud bucket just sleeps."""
        import time

        return time.sleep

    def _retry(self, op: Callable[[], T], what: str) -> T:
        return retry(op, f"{what} at {self.url}", self.retries, self.backoff, self._is_transient)


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
