"""Tree transfers: parallel, incremental, atomic, never outside the target.

Results go up twice over, cheaply: every file as its own object (what someone browsing the
bucket, `aws s3 sync` or `gsutil` sees), and the small ones also concatenated into a few
*packs* that results.manifest.json indexes. A pull then fetches each run of small files with
one ranged read instead of one request per file: with thousands of small files, per-request
latency, not bandwidth, is what costs time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KitError
from ..protocol import PACKS, RESULTS
from .base import Store, join_key
from .digest import InOrderDigest, algo_of, file_digest, unchanged
from .parallel import PIECE, Progress, pieces, run_parallel
from .paths import SafeRoot, free_name

PACK_FILE_LIMIT = 1 << 20  # files up to this size also go into a pack
PACK_SIZE = 64 << 20  # a pack is closed once it holds this much
RANGE_SIZE = 8 << 20  # the most one ranged read of a pack fetches


@dataclass
class TransferStats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    requests: int = 0  # object reads or writes issued (ranged reads of packs included)
    kept: list[str] = field(default_factory=list)  # local files preserved as *.orig
    installed: dict[str, str] = field(default_factory=dict)  # path -> sha256 of what is now in place
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, files: int, size: int) -> None:
        with self._lock:
            self.files += files
            self.bytes += size
            self.requests += 1


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
        size, sha = file_digest(root / rel)
        entries.append({"path": rel, "size": size, "sha256": sha})
    return entries


def put_tree(store: Store, local_dir: Path, prefix: str, *, label: str = "upload") -> TransferStats:
    """Upload every file under local_dir to prefix/, skipping those already there unchanged."""
    local_dir = Path(local_dir)
    remote = {o.key: o for o in store.list(join_key(prefix) + "/")}
    stats, todo = TransferStats(), []
    for rel in walk_files(local_dir):
        size, md5 = file_digest(local_dir / rel, "md5")
        key = join_key(prefix, rel)
        have = remote.get(key)
        if have and have.size == size and have.md5 == md5:
            stats.skipped += 1
        else:
            todo.append((rel, key, size))
    bar = Progress(sum(t[2] for t in todo), label, store.progress)

    def job(rel: str, key: str, size: int) -> Callable[[], None]:
        def go() -> None:
            store.put_file(local_dir / rel, key)
            stats.add(1, size)
            bar.update(size)
        return go

    try:
        run_parallel((job(*t) for t in todo), store.threads)
    finally:
        bar.close()
    return stats


def put_results(store: Store, root: Path, run_prefix: str, scratch: Path) -> tuple[dict, TransferStats]:
    """Upload a results tree as `pull` wants it; returns (the results manifest, stats).

    Files go to run_prefix/results/, packs of the small ones to run_prefix/packs/ (built in
    scratch). The caller writes the manifest last: its presence means 'complete'.
    """
    entries = tree_manifest(root) if root.is_dir() else []
    stats = put_tree(store, root, join_key(run_prefix, RESULTS)) if entries else TransferStats()
    packs = _write_packs(root, entries, scratch)
    if packs:
        put_tree(store, scratch, join_key(run_prefix, PACKS))
    return {"files": entries, "packs": [join_key(PACKS, p) for p in packs]}, stats  # pack keys relative to the run


def _write_packs(root: Path, entries: list[dict], scratch: Path) -> list[str]:
    """Concatenate the small files into packs; note `pack` (index) and `offset` in their entries."""
    small = [e for e in entries if e["size"] <= PACK_FILE_LIMIT]
    if len(small) < 2:
        return []
    scratch.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    out = None
    try:
        for e in small:
            if out is None or out.tell() >= PACK_SIZE:
                if out is not None:
                    out.close()
                names.append(f"{len(names):04d}.pack")
                out = open(scratch / names[-1], "wb")
            e["pack"], e["offset"] = len(names) - 1, out.tell()
            out.write((root / e["path"]).read_bytes())
    finally:
        if out is not None:
            out.close()
    return names


def pull_tree(store: Store, prefix: str, local_dir: Path, *, expected: list[dict] | None = None,
              packs: list[str] | None = None, known: dict[str, list] | None = None,
              label: str = "download", check: Callable[[list], None] | None = None) -> TransferStats:
    """Download prefix/ into local_dir: all of it or, on any failure, nothing.

    With `expected` (a results manifest's files) only those are fetched, each verified by
    sha256 — runs of packed files by one ranged read of their pack (`packs`: the packs' keys,
    which the entries' `pack` indexes); without it, whatever is listed (compared by MD5 where
    the backend has one). Files already present and identical are skipped; `known` ({path:
    [size, mtime_ns, sha256]} of a previous pull) spares hashing those whose size and mtime
    have not changed. A local file that differs is kept as `<name>.orig` (never overwritten
    silently). Keys that would land outside local_dir are refused, then `check` sees the
    (entry, destination) of each file to write, before anything is written. The files are
    fetched into a staging directory inside local_dir and moved into place only once all of
    them are verified: a failure half-way (a full disk, a lost bucket) leaves local_dir as it was.
    """
    local_dir = Path(local_dir)
    if expected is None:
        base = join_key(prefix) + "/"
        wanted = [{"path": o.key[len(base):], "size": o.size, "md5": o.md5} for o in store.list(base)]
    else:
        wanted = expected
    root = SafeRoot(local_dir)
    plan = [(e, root.join(e["path"])) for e in wanted]  # validate all keys first
    stats, todo = TransferStats(), []
    known = known or {}
    for entry, dest in plan:
        try:
            exists = stat.S_ISREG(os.lstat(dest).st_mode)  # a file, not a link to one
        except OSError:
            exists = False
        if exists and unchanged(entry, dest, known.get(entry["path"])):
            stats.skipped += 1
            if "sha256" in entry:
                stats.installed[entry["path"]] = entry["sha256"]
            continue
        if exists:
            stats.kept.append(entry["path"])
        todo.append((entry, dest, exists))  # an existing, different file is preserved as .orig
    if not todo:
        return stats
    if check:
        check([(entry, dest) for entry, dest, _ in todo])
    staging = local_dir / f".rk-pull-{os.getpid()}"
    staged = {id(entry): staging / str(n) for n, (entry, _, _) in enumerate(todo)}
    bar = Progress(sum(e["size"] for e, _, _ in todo), label, store.progress)

    def fetch(entry: dict, data: bytes | None = None) -> None:
        """Stage one file (downloaded, or `data`), verified against its manifest checksum."""
        tmp = staged[id(entry)]
        if data is None:
            store.get_file(join_key(prefix, entry["path"]), tmp)
        else:
            tmp.write_bytes(data)
        verify(entry, tmp, data)
        bar.update(entry["size"])

    def verify(entry: dict, tmp: Path, data: bytes | None = None, digest: InOrderDigest | None = None) -> None:
        """Against the manifest's sha256; without a manifest, against the listing's MD5 (the
        stores read objects without checking them themselves)."""
        if algo := algo_of(entry):
            got = (digest.result() if digest else file_digest(tmp, algo) if data is None
                   else (len(data), hashlib.new(algo, data, usedforsecurity=False).hexdigest()))
            if got != (entry["size"], entry[algo]):
                where = "its manifest checksum" if algo == "sha256" else "the bucket's MD5 of it"
                raise KitError(f"{entry['path']}: downloaded content does not match {where}; pull again")

    def single(entry: dict) -> Callable[[], None]:
        def go() -> None:
            fetch(entry)
            stats.add(1, entry["size"])
        return go

    def segment(key: str, items: list[tuple[dict, Path, bool]]) -> Callable[[], None]:
        def go() -> None:
            start = items[0][0]["offset"]
            data = store.get_range(key, start, items[-1][0]["offset"] + items[-1][0]["size"])
            for entry, _, _ in items:
                fetch(entry, data[entry["offset"] - start:entry["offset"] - start + entry["size"]])
            stats.add(len(items), sum(e["size"] for e, _, _ in items))
        return go

    def big(entry: dict, fd: int) -> list[Callable[[], None]]:
        """A big file in ranged reads side by side, each to its place in the staged file, and
        hashed in order as they arrive."""
        ranges = pieces(entry["size"], PIECE)
        if algo := algo_of(entry):
            digests[id(entry)] = InOrderDigest(fd, ranges, algo)

        def piece(n: int, start: int, end: int) -> Callable[[], None]:
            def go() -> None:
                store.get_range_into(join_key(prefix, entry["path"]), start, end, fd)
                if id(entry) in digests:
                    digests[id(entry)].written(n)
                bar.update(end - start)
            return go
        return [piece(n, *r) for n, r in enumerate(ranges)]

    singles, runs = _segments(todo, packs or [])
    large = [t[0] for t in singles if t[0]["size"] > PIECE]
    fds: dict[int, int] = {}
    digests: dict[int, InOrderDigest] = {}
    try:
        staging.mkdir(parents=True, exist_ok=True)
        for entry in large:
            fds[id(entry)] = os.open(staged[id(entry)], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fds[id(entry)], entry["size"])
        run_parallel([j for e in large for j in big(e, fds[id(e)])]
                     + [single(t[0]) for t in singles if t[0]["size"] <= PIECE]
                     + [segment(k, items) for k, items in runs], store.threads)
        for entry in large:
            verify(entry, staged[id(entry)], digest=digests.pop(id(entry), None))
            os.close(fds.pop(id(entry)))
            stats.add(1, entry["size"])
        made: set[Path] = set()
        for entry, dest, preserve in todo:  # all verified: now into place
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            if preserve:
                os.replace(dest, free_name(dest))
            os.replace(staged[id(entry)], dest)
            if "sha256" in entry:
                stats.installed[entry["path"]] = entry["sha256"]
    finally:
        bar.close()
        for digest in digests.values():  # a piece failed: they need not wait for the rest
            digest.stop()
        for fd in fds.values():
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _segments(todo: list, packs: list[str]) -> tuple[list, list]:
    """Split the downloads into single objects and runs of adjacent packed files (one ranged read each)."""
    def packed(entry: dict) -> bool:
        pack, offset = entry.get("pack"), entry.get("offset")
        return isinstance(pack, int) and 0 <= pack < len(packs) and isinstance(offset, int) and offset >= 0

    singles = [t for t in todo if not packed(t[0])]
    runs: list[tuple[str, list]] = []
    for item in sorted((t for t in todo if packed(t[0])), key=lambda t: (t[0]["pack"], t[0]["offset"])):
        entry = item[0]
        if runs:
            first, last = runs[-1][1][0][0], runs[-1][1][-1][0]
            if (last["pack"] == entry["pack"] and last["offset"] + last["size"] == entry["offset"]
                    and entry["offset"] + entry["size"] - first["offset"] <= RANGE_SIZE):
                runs[-1][1].append(item)
                continue
        runs.append((packs[entry["pack"]], [item]))
    return singles, runs
