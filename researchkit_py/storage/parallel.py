"""Work in parallel, and big objects in pieces: a file of many MB comes down as ranged reads
run side by side, each streamed to its own place in the file (memory stays at a read buffer
per thread, whatever the file's size), and goes up, where the backend can, as parts sent side
by side. One stream per file leaves most of a fast link idle."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

# A file larger than this comes down in ranged reads of this size. Small enough that the first
# pieces are in while the last are still coming, so the checksum follows close behind
# (digest.InOrderDigest); large enough that a request's latency is small beside its transfer.
PIECE = 32 << 20


class Progress:
    """A byte progress bar on a terminal, silence elsewhere (tqdm is imported only then)."""

    def __init__(self, total: int, label: str, allowed: bool):
        self.bar = None
        if total and allowed and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False, file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_parallel(jobs: Iterable[Callable[[], None]], threads: int) -> None:
    """Run the jobs on up to `threads` threads; the first failure propagates, once the pool has
    finished the others."""
    jobs = list(jobs)
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        for fut in [pool.submit(j) for j in jobs]:
            fut.result()


def pieces(size: int, piece: int = PIECE) -> list[tuple[int, int]]:
    """[start, end) ranges that cover `size` bytes, each at most `piece` long."""
    return [(start, min(start + piece, size)) for start in range(0, size, piece)] or [(0, 0)]


class OffsetWriter:
    """A file-like sink that writes at `offset` onwards with pwrite (threads share one file
    descriptor safely), counting what it wrote."""

    def __init__(self, fd: int, offset: int):
        self.fd, self.pos, self.written = fd, offset, 0

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.pos)
            self.pos, self.written, view = self.pos + n, self.written + n, view[n:]
        return len(data)

    def flush(self) -> None:
        pass
