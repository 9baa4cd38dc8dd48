"""Make files read-only for a phase and put every mode back afterwards, exactly.

Each lock writes a record of the original modes; only the holder of a record restores
it, so parallel runs never unlock each other's files.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _walk(path: Path) -> list[Path]:
    if path.is_symlink() or not path.exists():
        return []
    if not path.is_dir():
        return [path]
    out = []
    for dirpath, _dirnames, filenames in os.walk(path):
        out.extend(Path(dirpath) / f for f in filenames)
        out.append(Path(dirpath))
    return [p for p in out if not p.is_symlink()]


def lock(record: Path, paths: list[Path], exact_mode: int | None = None) -> int:
    """Remove write permission (or set exact_mode on files) and remember the old modes."""
    entries = []
    for root in paths:
        for p in _walk(Path(root)):
            mode = stat.S_IMODE(p.stat().st_mode)
            entries.append([str(p), mode])
            new = exact_mode if exact_mode is not None and not p.is_dir() else mode & ~WRITE_BITS
            os.chmod(p, new)
    record.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(record.read_text()) if record.exists() else []
    record.write_text(json.dumps(previous + entries))
    return len(entries)


def unlock(record: Path) -> int:
    if not record.exists():
        return 0
    entries = json.loads(record.read_text())
    for path, mode in reversed(entries):  # last locked first, so a path locked twice ends at its first mode
        try:
            os.chmod(path, mode)
        except FileNotFoundError:
            pass
    record.unlink()
    return len(entries)
