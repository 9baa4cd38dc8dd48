"""tools/artifact-store: large result files live in the bucket, content-addressed.

A pushed file goes to <bucket>/artifacts/<sha256> (skipped when already there), its
content moves into the project's .artifact-cache/<sha256> (git-ignored), and the file
becomes a relative link to it; <dir>/.artifacts.json records name, sha256, size and key.
Git then holds the link and the manifest; the bytes live in the bucket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .argv import ArgumentParser
from .clouds.registry import open_store
from .errors import KitError, UsageError, run_cli
from .settings import Settings
from .storage import Store
from .storage.transfer import file_digest

MANIFEST = ".artifacts.json"
CACHE = ".artifact-cache"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgG]?)[bB]?$")


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"--threshold {text!r}: write a size like 500K, 10M or 2G")
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()])


class ArtifactStore:
    def __init__(self, root: Path, store: Store):
        self.root, self.store = root.resolve(), store
        self.cache = self.root / CACHE

    def _cache_path(self, sha: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise KitError(f"refusing artifact hash {sha!r} from a manifest: not a sha256")
        return self.cache / sha

    def _ensure_cache(self) -> None:
        self.cache.mkdir(exist_ok=True)
        ignore = self.cache / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")  # the cache is never committed

    def push(self, path: Path) -> dict:
        path = Path(path)
        if path.is_symlink() and MANIFEST in os.listdir(path.parent):
            entry = read_manifest(path.parent).get(path.name)
            if entry:
                return {**entry, "path": str(path), "uploaded": False}
        if not path.is_file():
            raise KitError(f"{path} is not a file")
        size, sha = file_digest(path)
        key = f"artifacts/{sha}"
        uploaded = not self.store.exists(key)
        if uploaded:
            self.store.put_file(path, key)
        self._ensure_cache()
        cached = self._cache_path(sha)
        if cached.exists():
            path.unlink()
        else:
            shutil.move(str(path), cached)
        os.symlink(os.path.relpath(cached, path.parent.resolve()), path)
        entries = read_manifest(path.parent)
        entries[path.name] = {"sha256": sha, "size": size, "key": key}
        write_manifest(path.parent, entries)
        return {"path": str(path), "sha256": sha, "size": size, "key": key, "uploaded": uploaded}

    def push_dir(self, directory: Path, threshold: int) -> list[dict]:
        out = []
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if d != CACHE)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if name == MANIFEST or p.is_symlink():
                    continue
                if p.stat().st_size >= threshold:
                    out.append(self.push(p))
        return out

    def entries(self, directory: Path):
        """(directory, name, entry) for every manifest entry under directory."""
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if d != CACHE)
            if MANIFEST in filenames:
                for name, entry in sorted(read_manifest(Path(dirpath)).items()):
                    yield Path(dirpath), name, entry

    def state(self, directory: Path, name: str, entry: dict) -> str:
        path, cached = directory / name, self._cache_path(entry["sha256"])
        if path.is_symlink():
            if not cached.is_file():
                return "missing"
            return "ok" if path.resolve() == cached.resolve() else "wrong-link"
        if path.is_file():
            return "local-file"
        return "missing"

    def hydrate(self, directory: Path) -> list[dict]:
        out = []
        for d, name, entry in self.entries(directory):
            before = self.state(d, name, entry)
            if before in ("ok", "local-file"):  # a real file there is the user's: never replaced
                out.append({"path": str(d / name), "state": before, "action": "none"})
                continue
            cached = self._cache_path(entry["sha256"])
            downloaded = False
            if not cached.is_file() or file_digest(cached)[1] != entry["sha256"]:
                self._ensure_cache()
                fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".part-")
                os.close(fd)
                try:
                    self.store.get_file(entry["key"], Path(tmp))
                    if file_digest(Path(tmp))[1] != entry["sha256"]:
                        raise KitError(f"{entry['key']} in the bucket does not match its sha256; it was altered")
                    os.replace(tmp, cached)
                    downloaded = True
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            link = d / name
            if link.is_symlink():
                link.unlink()
            os.symlink(os.path.relpath(cached, d.resolve()), link)
            out.append({"path": str(link), "state": before, "action": "downloaded" if downloaded else "linked"})
        return out

    def verify(self, directory: Path) -> list[dict]:
        out = []
        for d, name, entry in self.entries(directory):
            target = d / name if (d / name).is_file() else self._cache_path(entry["sha256"])
            if not target.is_file():
                out.append({"path": str(d / name), "ok": False, "why": "missing: run `artifact-store hydrate`"})
                continue
            size, sha = file_digest(target)
            ok = sha == entry["sha256"] and size == entry["size"]
            out.append({"path": str(d / name), "ok": ok, "why": "" if ok else "content differs from the manifest"})
        return out


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise KitError(f"{path} is not valid JSON; restore it from git") from None
    for name in data:
        if "/" in name or name in ("", ".", "..") or "\x00" in name:
            raise KitError(f"{path}: refusing entry {name!r}: not a plain file name")
    return data


def write_manifest(directory: Path, entries: dict) -> None:
    (Path(directory) / MANIFEST).write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")


def open_artifacts(settings: Settings) -> ArtifactStore:
    url = settings.get("RK_ARTIFACT_BUCKET") or settings.get("RK_BUCKET") or \
        f"file://{settings.state_home() / 'local' / 'bucket'}"
    return ArtifactStore(settings.root, open_store(url, settings))


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="artifact-store", description=__doc__.split("\n\n")[1].replace("\n", " "))
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, arg, what in (
            ("push", "file", "move one file's bytes to the bucket; leave a link"),
            ("push-dir", "dir", "push every file of a directory over --threshold"),
            ("hydrate", "dir", "restore missing files from the bucket, repair links"),
            ("status", "dir", "each artifact: present, missing or modified"),
            ("verify", "dir", "re-hash every artifact; exit 1 on any mismatch")):
        s = sub.add_parser(name, help=what)
        s.add_argument(arg, nargs=None if name in ("push", "push-dir") else "?", default=".")
        s.add_argument("--json", action="store_true")
        if name == "push-dir":
            s.add_argument("--threshold", default="10M", help="size above which a file is pushed (default 10M)")
    args = p.parse_args(argv)
    arts = open_artifacts(Settings())
    target = Path(args.file if args.cmd == "push" else args.dir)
    if args.cmd != "push" and not target.is_dir():
        raise KitError(f"{target} is not a directory")
    if args.cmd == "push":
        rows = [arts.push(target)]
    elif args.cmd == "push-dir":
        rows = arts.push_dir(target, parse_size(args.threshold))
    elif args.cmd == "hydrate":
        rows = arts.hydrate(target)
    elif args.cmd == "status":
        rows = [{"path": str(d / n), "sha256": e["sha256"], "size": e["size"], "state": arts.state(d, n, e)}
                for d, n, e in arts.entries(target)]
    else:
        rows = arts.verify(target)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            detail = r.get("action") or r.get("state") or ("uploaded" if r.get("uploaded") else "already in the bucket")
            if "ok" in r:
                detail = "ok" if r["ok"] else f"MISMATCH: {r['why']}"
            print(f"{r['path']}  {detail}")
    bad = [r for r in rows if r.get("ok") is False]
    if bad:
        raise KitError(f"{len(bad)} artifact(s) failed verification: {', '.join(r['path'] for r in bad[:3])}")
    return 0


if __name__ == "__main__":
    run_cli("artifact-store", main)
