"""Where pulled files land, checked before anything is written: a pull that cannot finish
(a file in the way, a read-only directory, too little space) is refused whole, with one
line that names the fix. Client side only (the VM agent does not ship it)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import KitError


def check_landing(files: list[tuple[dict, Path]], extra: Iterable[int] = ()) -> None:
    """The pull_tree check for a client's pull: (manifest entry, destination) of each file to
    write; `extra`, the sizes of what the pull writes beside them (its records, the log)."""
    if files:
        check_writable(dest for _, dest in files)
        check_room(files[0][1].parent, [*(entry["size"] for entry, _ in files), *extra])


def _existing(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(dests: Iterable[Path]) -> None:
    """Refuse, before anything is written, files that could not land: a directory where a
    file must go, a file where a directory must be, a directory this user may not write."""
    seen: set[Path] = set()
    try:
        for dest in dests:
            if dest.is_dir() and not dest.is_symlink():
                raise KitError(f"{dest} is a directory, but the run has a file of that name; move it aside and pull again")
            if dest.parent in seen:
                continue
            seen.add(dest.parent)
            probe = _existing(dest.parent)
            if not probe.is_dir():
                raise KitError(f"{probe} is a file, but the run has a directory of that name; move it aside and pull again")
            if not os.access(probe, os.W_OK | os.X_OK):
                raise KitError(f"{probe} is not writable; make it writable (chmod u+w {probe}) or pull into another "
                               "--output-dir; nothing was changed")
    except OSError as e:
        raise KitError(f"cannot look at {e.filename}: {e.strerror}; check its permissions") from None


def check_room(root: Path, sizes: Iterable[int]) -> None:
    """Refuse a download larger than the free space where it goes (in whole blocks)."""
    try:
        fs = os.statvfs(_existing(Path(root)))
    except OSError:
        return  # no way to tell here: the write itself will say
    block = fs.f_frsize or 4096
    need, free = sum(-(-size // block) * block for size in sizes), fs.f_bavail * fs.f_frsize
    if need > free:
        raise KitError(f"the results need {_size(need)} but {root} has {_size(free)} free; "
                       "free some space or pull into another --output-dir; nothing was changed")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_write_error(e: OSError) -> str:
    """What went wrong writing locally, and what to do, without the OS's own paths."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device; free some space or pull into another --output-dir; nothing was changed"
    return f"{e.strerror}; check the directory's permissions or pull into another --output-dir"


