"""Keys from a bucket are untrusted: they must never name a path outside the destination."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import KitError


class UnsafePath(KitError):
    pass


def safe_join(root: Path, key: str) -> Path:
    """`root / key`, refusing keys that are absolute, contain `..`, or resolve outside root
    (e.g. through a symlinked directory already in root)."""
    if not key or "\x00" in key or "\\" in key:
        raise UnsafePath(f"refusing object key {key!r}: empty or not a plain relative path")
    pure = PurePosixPath(key)
    if pure.is_absolute() or ".." in pure.parts:
        raise UnsafePath(f"refusing object key {key!r}: it would write outside {root}")
    root = Path(root).resolve()
    dest = root.joinpath(*pure.parts)
    # resolve the parent only: the final component may be an existing symlink that we replace
    parent = dest.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UnsafePath(f"refusing object key {key!r}: {dest.parent} leads outside {root}")
    return parent / dest.name
