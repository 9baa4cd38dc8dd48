"""Keys from a bucket are untrusted: they must never name a path outside the destination."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import KitError


class UnsafePath(KitError):
    pass


class SafeRoot:
    """Joins untrusted keys under one root, refusing keys that are absolute, contain `..`, or
    resolve outside it (e.g. through a symlinked directory already there). Each directory is
    resolved once, so checking thousands of keys costs a few system calls, not thousands."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._parents: dict[Path, Path] = {}

    def join(self, key: str) -> Path:
        if not key or "\x00" in key or "\\" in key:
            raise UnsafePath(f"refusing object key {key!r}: empty or not a plain relative path")
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts:
            raise UnsafePath(f"refusing object key {key!r}: it would write outside {self.root}")
        dest = self.root.joinpath(*pure.parts)
        # resolve the parent only: the final component may be an existing symlink that we replace
        parent = self._parents.get(dest.parent)
        if parent is None:
            parent = dest.parent.resolve()
            if parent != self.root and self.root not in parent.parents:
                raise UnsafePath(f"refusing object key {key!r}: {dest.parent} leads outside {self.root}")
            self._parents[dest.parent] = parent
        return parent / dest.name


def safe_join(root: Path, key: str) -> Path:
    """`root / key` for one untrusted key (see SafeRoot)."""
    return SafeRoot(root).join(key)
