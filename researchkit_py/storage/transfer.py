"""Tree transfers: parallel, incremental (size + checksum), atomic, never outside the target."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KitError
from .base import Store, join_key
from .paths import safe_join

DEFAULT_THREADS = int(os.environ.get("RK_TRANSFER_THREADS", "16"))


@dataclass
class TransferStats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    kept: list[str] = field(default_factory=list)  # local files preserved as *.orig
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, size: int) -> None:
        with self._lock:
            self.files += 1
            self.bytes += size


def digests(path: Path) -> tuple[int, str, str]:
    """(size, md5 hex, sha256 hex) in one read."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def walk_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under root, sorted; symlinks are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def tree_manifest(root: Path) -> list[dict]:
    """[{path, size, sha256}] for every file under root: what results.manifest.json holds."""
    entries = []
    for rel in walk_files(root):
        size, _, sha = digests(root / rel)
        entries.append({"path": rel, "size": size, "sha256": sha})
    return entries


class _Progress:
    """A byte progress bar on a terminal, silence elsewhere (tqdm is imported only then)."""

    def __init__(self, total: int, label: str):
        self.bar = None
        if total and sys.stderr.isatty() and not os.environ.get("RK_NO_PROGRESS"):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False, file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_parallel(jobs: Iterable[Callable[[], None]], threads: int) -> None:
    jobs = list(jobs)
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        for fut in [pool.submit(j) for j in jobs]:
            fut.result()  # the first failure propagates; the pool finishes the others first


def put_tree(store: Store, local_dir: Path, prefix: str, *, threads: int = DEFAULT_THREADS,
             label: str = "upload") -> TransferStats:
    """Upload every file under local_dir to prefix/, skipping those already there unchanged."""
    local_dir = Path(local_dir)
    remote = {o.key: o for o in store.list(join_key(prefix) + "/")}
    stats, todo = TransferStats(), []
    for rel in walk_files(local_dir):
        size, md5, _ = digests(local_dir / rel)
        key = join_key(prefix, rel)
        have = remote.get(key)
        if have and have.size == size and have.md5 == md5:
            stats.skipped += 1
        else:
            todo.append((rel, key, size))
    bar = _Progress(sum(t[2] for t in todo), label)

    def job(rel: str, key: str, size: int) -> Callable[[], None]:
        def go() -> None:
            store.put_file(local_dir / rel, key)
            stats.add(size)
            bar.update(size)
        return go

    try:
        _run_parallel((job(*t) for t in todo), threads)
    finally:
        bar.close()
    return stats


def pull_tree(store: Store, prefix: str, local_dir: Path, *, expected: list[dict] | None = None,
              threads: int = DEFAULT_THREADS, label: str = "download") -> TransferStats:
    """Download prefix/ into local_dir.

    With `expected` (a results manifest) only those files are fetched, each verified by
    sha256; without it, whatever is listed (compared by MD5 where the backend has one).
    Files already present and identical are skipped. A local file that differs is kept as
    `<name>.orig` (never overwritten silently). Keys that would land outside local_dir are
    refused before anything is written.
    """
    local_dir = Path(local_dir)
    if expected is None:
        base = join_key(prefix) + "/"
        wanted = [{"path": o.key[len(base):], "size": o.size, "md5": o.md5} for o in store.list(base)]
    else:
        wanted = expected
    plan = [(e, safe_join(local_dir, e["path"])) for e in wanted]  # validate all keys first
    stats, todo = TransferStats(), []
    for entry, dest in plan:
        exists = dest.is_file() and not dest.is_symlink()
        if exists:
            size, md5, sha = digests(dest)
            same = size == entry["size"] and (
                sha == entry.get("sha256") if "sha256" in entry else entry.get("md5") is not None and md5 == entry["md5"]
            )
            if same:
                stats.skipped += 1
                continue
            stats.kept.append(entry["path"])
        todo.append((entry, dest, exists))  # an existing, different file is preserved as .orig
    bar = _Progress(sum(e["size"] for e, _, _ in todo), label)
    mode = _file_mode()

    def job(entry: dict, dest: Path, preserve: bool) -> Callable[[], None]:
        def go() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".rk-part-")
            os.close(fd)
            os.chmod(tmp, mode)  # as if created normally, not mkstemp's 0600
            try:
                store.get_file(join_key(prefix, entry["path"]), Path(tmp))
                if "sha256" in entry:
                    size, _, sha = digests(Path(tmp))
                    if sha != entry["sha256"] or size != entry["size"]:
                        raise KitError(f"{entry['path']}: downloaded content does not match its manifest checksum; pull again")
                if preserve:
                    os.replace(dest, _free_name(dest))
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            stats.add(entry["size"])
            bar.update(entry["size"])
        return go

    try:
        _run_parallel((job(*t) for t in todo), threads)
    finally:
        bar.close()
    return stats


def _file_mode() -> int:
    umask = os.umask(0o22)
    os.umask(umask)
    return 0o666 & ~umask


def _free_name(dest: Path) -> Path:
    cand = dest.with_name(dest.name + ".orig")
    n = 1
    while cand.exists():
        n += 1
        cand = dest.with_name(f"{dest.name}.orig{n}")
    return cand
