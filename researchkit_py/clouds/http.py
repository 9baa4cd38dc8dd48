"""HTTP for what runs on a cloud VM, standard library only: one kept-alive connection per
thread and host, a response read whole or streamed into a file, and errors that the retry
policy (errors.retry) can classify. The VM reaches its bucket with this alone, so it reports
before anything is installed (clouds/*/vm.py; the stores in clouds/*/rest.py build on them)."""

from __future__ import annotations

import errno
import http.client
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from ..errors import retry

TIMEOUT = 60  # seconds without a byte before a request fails (and is retried)
_local = threading.local()


class HTTPStatusError(Exception):
    """The server answered with an error status; `status` tells whether to retry."""

    def __init__(self, status: int, what: str, body: bytes = b""):
        detail = " ".join(body.decode("utf-8", "replace").split())[:300]
        super().__init__(f"HTTP {status} from {what}" + (f": {detail}" if detail else ""))
        self.status = status


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    data: bytes


def transient(exc: BaseException) -> bool:
    """Worth retrying: the network failed, or the server said it is busy or broken."""
    if isinstance(exc, HTTPStatusError):
        return exc.status in (408, 429) or exc.status >= 500
    return isinstance(exc, (ConnectionError, TimeoutError))


def request(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | BinaryIO = b"", *,
            sink: BinaryIO | None = None) -> Response:
    """One request on this thread's connection to the URL's host (reopened once when the server
    has closed a kept-alive one). The body is read into Response.data or, with `sink` and a 2xx
    status, written there. A failure of the network raises ConnectionError; one of the local
    disk (writing to `sink`) stays the OSError it is."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for attempt in (0, 1):
        conn, reused = _connection(parts.scheme, parts.netloc)
        answered = False
        try:
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            answered = True
            out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"")
            streaming = sink is not None and 200 <= resp.status < 300
            while streaming and (chunk := resp.read(1 << 20)):
                sink.write(chunk)  # type: ignore[union-attr]
            if not streaming:
                out.data = resp.read()
            if resp.will_close:
                _drop(parts.scheme, parts.netloc)
            return out
        except (OSError, http.client.HTTPException) as e:
            _drop(parts.scheme, parts.netloc)
            if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
                raise
            stale = isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))
            if attempt == 0 and reused and stale and not answered and rewind(body):
                continue  # the server closed a kept-alive connection before answering: once more, anew
            raise ConnectionError(f"{method} {parts.scheme}://{parts.netloc}: {e.__class__.__name__}: {e}") from e
    raise AssertionError("unreachable")


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def rewind(body: bytes | BinaryIO) -> bool:
    if isinstance(body, bytes):
        return True
    try:
        body.seek(0)  # a file: from its start again
        return True
    except (AttributeError, OSError):
        return False


def _connection(scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
    pool = _local.__dict__.setdefault("pool", {})
    conn = pool.get((scheme, netloc))
    if conn is not None:
        return conn, True
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = pool[(scheme, netloc)] = cls(netloc, timeout=TIMEOUT)
    return conn, False


def _drop(scheme: str, netloc: str) -> None:
    conn = _local.__dict__.get("pool", {}).pop((scheme, netloc), None)
    if conn is not None:
        conn.close()


class FileSlice:
    """`length` bytes of an open file from `offset`, as a request body (a part of an upload)."""

    def __init__(self, f: BinaryIO, offset: int, length: int):
        self.f, self.offset, self.left, self.length = f, offset, length, length
        f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def seek(self, pos: int) -> int:
        self.f.seek(self.offset + pos)
        self.left = self.length - pos
        return pos


class RetriedTransfers:
    """A VM's bucket's whole-object calls, each retried on what `transient` says may pass: the
    bucket class (clouds/*/vm.py) gives put(key, bytes | Path), get(key, local), url, retries
    and backoff."""

    url: str
    retries: int
    backoff: float

    def put_bytes(self, key: str, data: bytes) -> None:
        retry(lambda: self.put(key, data), f"write {key} at {self.url}", self.retries, self.backoff, transient)

    def put_file(self, local: Path, key: str) -> None:
        retry(lambda: self.put(key, Path(local)), f"upload {key} at {self.url}", self.retries, self.backoff,
              transient)

    def get_file(self, key: str, local: Path) -> None:
        retry(lambda: self.get(key, Path(local)), f"download {key} at {self.url}", self.retries, self.backoff,
              transient)
