"""Local paths written from what a bucket holds: untrusted keys never name a path outside the
destination, and records are replaced atomically."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from ..errors import KitError

NAME_MAX = 255  # bytes in one file name, on Linux and macOS alike
PATH_MAX = 4096


class UnsafePath(KitError):
    pass


class SafeRoot:
    """Joins untrusted keys under one root, refusing keys that are absolute, contain `..`, or
    resolve outside it (e.g. through a symlinked directory already there). Each directory is
    resolved once, so checking thousands of keys costs a few system calls, not thousands."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._base = str(self.root)
        self._parents: dict[str, Path] = {}

    def join(self, key: str) -> Path:
        # strings, not pathlib, until the end: a pull checks every key of its manifest (2,000
        # keys took 0.2 s with PurePosixPath); the parts are those PurePosixPath would give
        if not key or "\x00" in key or "\\" in key:
            raise UnsafePath(f"refusing object key {key!r}: empty or not a plain relative path")
        parts = [p for p in key.split("/") if p and p != "."]
        if not parts or key.startswith("/") or ".." in parts:
            raise UnsafePath(f"refusing object key {key!r}: it would write outside {self.root}")
        rel = "/".join(parts)
        if max(len(p.encode()) for p in parts) > NAME_MAX or len(f"{self._base}/{rel}".encode()) >= PATH_MAX:
            raise UnsafePath(f"refusing object key {key[:40]!r}…: longer than a file name or path may be here "
                             f"({NAME_MAX} bytes a name); fetch that object by hand under a shorter name")
        # resolve the parent only: the final component may be an existing symlink that we replace
        folder = rel.rpartition("/")[0]
        parent = self._parents.get(folder)
        if parent is None:
            parent = self.root.joinpath(*parts[:-1]).resolve()
            if parent != self.root and self.root not in parent.parents:
                raise UnsafePath(f"refusing object key {key!r}: {self.root.joinpath(*parts[:-1])} leads outside "
                                 f"{self.root}")
            self._parents[folder] = parent
        return parent / parts[-1]


def safe_join(root: Path, key: str) -> Path:
    """`root / key` for one untrusted key (see SafeRoot)."""
    return SafeRoot(root).join(key)


def free_name(dest: Path) -> Path:
    """Where a local file that differs from the run's is kept: <name>.orig, .orig2, …"""
    cand = dest.with_name(dest.name + ".orig")
    n = 1
    while cand.exists():
        n += 1
        cand = dest.with_name(f"{dest.name}.orig{n}")
    return cand


def write_json_atomic(path: Path, value: object, indent: int | None = None) -> None:
    """Write JSON through a temporary file beside `path`: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=indent) + ("\n" if indent else ""))
    os.replace(tmp, path)


def extract_tar(archive: Path, dest: Path) -> int:
    """Extract a tar.gz (a code bundle): only regular files and directories, each checked to
    land inside dest. Returns the number of files."""
    dest.mkdir(parents=True, exist_ok=True)
    root, n = SafeRoot(dest), 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            target = root.join(member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as f:
                    f.write(src.read())
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                n += 1
    return n
