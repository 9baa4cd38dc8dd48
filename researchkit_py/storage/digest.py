"""What a pulled file is checked against, and how: digests of local files, of a big file as its
pieces arrive out of order, and whether a file already in place is the entry's content."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def file_digest(path: Path, algo: str = "sha256") -> tuple[int, str]:
    """(size, hex digest) in one read."""
    h = hashlib.new(algo, usedforsecurity=False)
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def unchanged(entry: dict, dest: Path, known: list | None) -> bool:
    """Is the local file the entry's content? Trust a previous pull's record while the file's
    size and mtime are what it recorded (as rsync and git do); hash it otherwise."""
    if known and "sha256" in entry and known[2:] == [entry["sha256"]]:
        st = dest.lstat()
        if [st.st_size, st.st_mtime_ns] == known[:2]:
            return True
    algo = "sha256" if "sha256" in entry else "md5"
    size, digest = file_digest(dest, algo)
    return size == entry["size"] and digest == entry.get(algo)


def algo_of(entry: dict) -> str | None:
    """What a manifest entry is checked by: its sha256, else (a listing's) MD5, else nothing."""
    return "sha256" if "sha256" in entry else "md5" if entry.get("md5") else None


class InOrderDigest:
    """The digest of a file whose pieces several threads write out of order: a thread of its own
    reads each piece back (from the page cache) once it is written, in the file's order, and
    hashes it while later pieces are still coming down. Checking a big file then waits for its
    last piece, not for a second pass over the whole file after it."""

    def __init__(self, fd: int, ranges: list[tuple[int, int]], algo: str):
        self.fd, self.ranges, self.size = fd, ranges, 0
        self._written = [threading.Event() for _ in ranges]
        self._hash = hashlib.new(algo, usedforsecurity=False)
        self._stopped, self._error = False, None
        self._thread = threading.Thread(target=self._follow, name="pull-digest", daemon=True)
        self._thread.start()

    def written(self, n: int) -> None:
        """Piece `n` (of `ranges`) is all in the file."""
        self._written[n].set()

    def _follow(self) -> None:
        try:
            for event, (pos, end) in zip(self._written, self.ranges, strict=True):
                event.wait()
                while pos < end and not self._stopped:
                    chunk = os.pread(self.fd, min(1 << 20, end - pos), pos)
                    if not chunk:
                        return  # shorter than its pieces: the size check says so
                    self._hash.update(chunk)
                    pos, self.size = pos + len(chunk), self.size + len(chunk)
        except OSError as e:
            self._error = e

    def result(self) -> tuple[int, str]:
        """(bytes hashed, hex digest), as file_digest gives them, once every piece is in."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.size, self._hash.hexdigest()

    def stop(self) -> None:
        """Give up (a piece failed): the thread ends without waiting for the rest."""
        self._stopped = True
        for event in self._written:
            event.set()
        self._thread.join()
