"""The code bundle: the project's files as a reproducible tar.gz named by its sha256."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import KitError
from .protocol import bundle_key
from .storage import Store

# Never shipped: outputs, data (sent separately with --data-dirs), environments, caches.
EXCLUDE = (
    "results/*", "data/*", ".git/*", ".venv/*", "venv/*", "env/*", "*/__pycache__/*", "__pycache__/*",
    "*.pyc", "node_modules/*", ".kit-state/*", ".researchkit/*", ".artifact-cache/*",
    ".pytest_cache/*", ".ruff_cache/*", ".mypy_cache/*",
)
FIXED_MTIME = 315532800  # 1980-01-01: a fixed time makes the archive byte-for-byte reproducible


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    size: int
    files: int

    @property
    def key(self) -> str:
        return bundle_key(self.sha256)


def project_files(root: Path, extra_exclude: tuple[str, ...] = ()) -> list[str]:
    """Tracked and untracked-but-not-ignored files (git), else every file; minus EXCLUDE."""
    root = Path(root)
    names: list[str] | None = None
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                check=True, capture_output=True,
            ).stdout
            names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
        except (OSError, subprocess.CalledProcessError):
            names = None
    if names is None:
        names = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            dirnames[:] = [d for d in dirnames if not _excluded(_rel(rel_dir, d) + "/x", extra_exclude)]
            names.extend(_rel(rel_dir, f) for f in filenames)
    keep = []
    for name in sorted(set(names)):
        p = root / name
        if _excluded(name, extra_exclude) or p.is_symlink() or not p.is_file():
            continue
        keep.append(name)
    return keep


def _rel(d: str, name: str) -> str:
    return name if d in ("", ".") else f"{d}/{name}"


def _excluded(name: str, extra: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE + extra)


def make_bundle(root: Path, max_mb: float = 200, extra_exclude: tuple[str, ...] = ()) -> Bundle:
    root = Path(root)
    files = project_files(root, extra_exclude)
    total = sum((root / f).stat().st_size for f in files)
    if total > max_mb * 1024 * 1024:
        biggest = sorted(files, key=lambda f: (root / f).stat().st_size, reverse=True)[:3]
        raise KitError(
            f"the code bundle would be {total / 2**20:.0f} MB (limit {max_mb:g} MB, RK_MAX_BUNDLE_MB); "
            f"largest: {', '.join(biggest)} — git-ignore them or ship them with --data-dirs"
        )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in files:
            p = root / name
            info = tarfile.TarInfo(name)
            info.size = p.stat().st_size
            info.mtime = FIXED_MTIME
            info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
    data = gzip.compress(raw.getvalue(), mtime=0)  # mtime=0 and no file name: reproducible
    fd, tmp = tempfile.mkstemp(prefix="rk-bundle-", suffix=".tar.gz")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Bundle(Path(tmp), hashlib.sha256(data).hexdigest(), len(data), len(files))


def upload_bundle(store: Store, bundle: Bundle) -> int:
    """Upload unless an object of that name (hence that content) is already there; returns
    the bytes sent (0 for unchanged code)."""
    if store.exists(bundle.key):
        return 0
    store.put_file(bundle.path, bundle.key)
    return bundle.path.stat().st_size
