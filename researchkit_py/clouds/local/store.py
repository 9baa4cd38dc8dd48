"""A local directory as the bucket: the embedded provider's store, and the tests'."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ...errors import NotFound
from ...settings import Settings
from ...storage.base import ObjectInfo, Store
from ...storage.paths import safe_join


class LocalStore(Store):
    @classmethod
    def open_url(cls, url: str, settings: Settings) -> LocalStore:
        return cls(Path(url.removeprefix("file://")), settings)

    def __init__(self, root: Path, settings: Settings):
        super().__init__(settings)
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return safe_join(self.root, key)

    def _put_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        os.close(fd)
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)

    def _get_file(self, key: str, local: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key} in {self.url}")
        shutil.copyfile(src, local)

    def _put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)

    def _get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key} in {self.url}") from None

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key} in {self.url}") from None

    def _get_range_into(self, key: str, start: int, end: int, sink) -> None:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                while start < end and (chunk := f.read(min(1 << 20, end - start))):
                    sink.write(chunk)
                    start += len(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key} in {self.url}") from None

    def _append_file(self, local: Path, key: str, start: int, end: int) -> None:
        dest = self._path(key)
        size = dest.stat().st_size if dest.is_file() else -1
        if size == end:
            return
        if size != start:
            super()._append_file(local, key, start, end)
            return
        with open(local, "rb") as src, open(dest, "r+b") as out:
            src.seek(start)
            out.seek(start)
            out.write(src.read(end - start))

    def _get_tail(self, key: str, start: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key} in {self.url}") from None

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # A prefix is a string prefix, as in the clouds: list the deepest directory it names.
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".part-"):
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key, p.stat().st_size, _md5(p))

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_dir():
            yield from (p.name for p in base.iterdir() if p.is_dir())

    def watch(self, keys: list[str], every: float = 0.01) -> Callable[[float], None]:
        """Ends its pause as soon as one of the files changes: a stat every `every` s costs
        microseconds, where a 0.2 s poll of the whole run state kept a finished run waiting
        0.1 s on average (bench/scale.py: the embedded overhead)."""
        paths = [self._path(k) for k in keys]
        seen = [_signature(p) for p in paths]

        def pause(seconds: float) -> None:
            end = time.monotonic() + seconds
            while True:
                now = [_signature(p) for p in paths]
                if now != seen:
                    seen[:] = now
                    return
                left = end - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(every, left))

        return pause

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written (in place or replaced) or removed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
