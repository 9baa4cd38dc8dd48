"""The VM's setup, standard library only: the project's requirements.txt installed into a venv
by uv — found on the image, or fetched from the package index as a wheel — with a cause that
names what failed.

The index is UV_INDEX_URL (PyPI's by default): the tests serve a wheelhouse on their network
and say so through it; nothing else differs from a real VM.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import KitError

UV_VERSION = "0.13.9"  # the installer the VM fetches: a static binary in a wheel (bump here, with the tests' wheelhouse)
PYPI = "https://pypi.org/simple/"


class SetupError(KitError):
    """What failed during the setup, in a line: the final status carries it."""


def index_url(environ: dict[str, str]) -> str:
    return (environ.get("UV_INDEX_URL") or PYPI).rstrip("/") + "/"


def _open(url: str, attempts: int = 3) -> bytes:
    """GET url. A name that does not resolve is tried again (a resolver still starting); that,
    or any other failure of the network (no route, refused, 15 s without an answer: a VM
    without a NAT), becomes a SetupError that says the index cannot be reached and what a VM
    needs to reach it."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return r.read()
        except urllib.error.HTTPError:
            raise
        except OSError as e:
            reason = getattr(e, "reason", e)
            if attempt == attempts - 1 or not isinstance(reason, socket.gaierror):
                host = re.sub(r"^(\w+://[^/]+).*", r"\1", url)
                raise SetupError(f"cannot reach the package index {host} ({reason}): the VM needs a route to it "
                                 "(an external address or a NAT), or UV_INDEX_URL (--env) naming one it can reach") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def fetch_uv(index: str, dest: Path) -> Path:
    """uv UV_VERSION for this machine, from the index's simple page: the wheel, its sha256 checked
    against the index's, the binary taken out of it."""
    page = index + "uv/"
    try:
        html = _open(page).decode()
    except urllib.error.HTTPError as e:
        raise SetupError(f"cannot fetch uv: {page} answered HTTP {e.code}") from None
    arch = platform.machine()
    wheel_name = rf"uv-{re.escape(UV_VERSION)}-py3-none-manylinux[^\"#/]*_{re.escape(arch)}\.whl"
    links = re.findall(rf'href="([^"#]*?({wheel_name}))(?:#sha256=([0-9a-f]{{64}}))?"', html)
    if not links:
        raise SetupError(f"cannot fetch uv: {page} offers no uv {UV_VERSION} wheel for {arch} Linux")
    href, name, digest = links[0]
    try:
        wheel = _open(urllib.request.urljoin(page, href))
    except urllib.error.HTTPError as e:
        raise SetupError(f"cannot fetch uv: {name} answered HTTP {e.code}") from None
    if digest and hashlib.sha256(wheel).hexdigest() != digest:
        raise SetupError(f"cannot fetch uv: {name} does not match the sha256 the index gives")
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        binary = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(z.read(binary))
    dest.chmod(0o755)
    print(f"researchkit: fetched {name} ({len(wheel) >> 20} MB)", flush=True)
    return dest


def find_uv(root: Path, environ: dict[str, str]) -> str:
    """uv on the PATH or in this Python (the embedded provider's machine may have it), else fetched."""
    if shutil.which("uv"):
        return "uv"
    if importlib.util.find_spec("uv"):
        import uv  # type: ignore[import-not-found]

        return uv.find_uv_bin()
    return str(fetch_uv(index_url(environ), root / "bin" / "uv"))


def install_requirements(requirements: Path, venv: Path, root: Path, environ: dict[str, str]) -> None:
    """A venv over the image's python3 (its packages stay visible), requirements.txt into it; one
    line in the log says what was installed, and how long each part took. With RK_ENV_CACHE (the
    embedded provider's, on this machine), `venv` links to an environment built once for the
    same inputs and reused after (reuse_env)."""
    cache = environ.get("RK_ENV_CACHE", "")
    if cache and cache != "off" and not _local_refs(requirements):
        return reuse_env(requirements, venv, Path(cache), environ)
    _build(requirements, venv, root, environ, {"UV_CACHE_DIR": str(root / "uv-cache")})


def _build(requirements: Path, venv: Path, root: Path, environ: dict[str, str], extra: dict[str, str],
           relocatable: bool = False) -> None:
    t0 = time.monotonic()
    uv = find_uv(root, environ)
    took = {"uv": time.monotonic() - t0}
    env = {**extra, **environ}  # the uv cache beside the venv: uv links from its cache
    out = ""
    for part, argv in (("venv", [uv, "venv", "--quiet", "--system-site-packages", "--python", "python3",
                                 *(["--relocatable"] if relocatable else []), str(venv)]),
                       ("install", [uv, "pip", "install", "--python", str(venv / "bin" / "python"),
                                    "-r", str(requirements)])):
        t1 = time.monotonic()
        r = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode:
            print(r.stdout, end="", flush=True)
            raise SetupError(_why(r.stdout, requirements, environ))
        took[part], out = time.monotonic() - t1, out + r.stdout
    installed = re.findall(r"^ \+ (\S+)", out, re.M)
    print(f"researchkit: {requirements.name} installed ({', '.join(f'{k} {v:.2f} s' for k, v in took.items())}): "
          f"{', '.join(installed) or 'nothing new'}", flush=True)


# --- environments reused by what they were built from (the embedded provider) ------------
BUILT = ".researchkit-built"  # written last into a finished environment: without it, never used


def _local_refs(requirements: Path) -> bool:
    """A requirements file that names local paths or other files (-e ., ./pkg, -r more.txt):
    its content does not say what gets installed, so its environment is not reused."""
    for line in requirements.read_text(errors="replace").splitlines():
        line = line.split(" #")[0].strip()
        if re.match(r"(-e|--editable|-r|--requirement|-c|--constraint|-f|--find-links)\b|[./~]|file:", line):
            return True
    return False


def env_key(requirements: Path, environ: dict[str, str]) -> str:
    """What an environment is built from: requirements.txt's bytes, the python3 it is made over,
    uv's version, and the index settings (UV_* and PIP_* but the cache's place)."""
    python = subprocess.run(["python3", "-c", "import sys; print(sys.version, sys.executable, sys.prefix)"],
                            capture_output=True, text=True).stdout
    settings = sorted((k, v) for k, v in environ.items() if k.startswith(("UV_", "PIP_")) and k != "UV_CACHE_DIR")
    h = hashlib.sha256(requirements.read_bytes())
    h.update(json.dumps([python, UV_VERSION, settings]).encode())
    return h.hexdigest()[:32]


def reuse_env(requirements: Path, venv: Path, cache: Path, environ: dict[str, str]) -> None:
    """`venv` as a link to cache/<env_key>, built there first if needed: into a temporary
    directory, renamed into place once complete, under a lock per key, so that runs starting
    together build it once and none ever sees half of one. A directory without BUILT (a build
    that died) is removed and built again."""
    t0 = time.monotonic()
    key = env_key(requirements, environ)
    final = cache / key
    if not (final / BUILT).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if not (final / BUILT).is_file():
                shutil.rmtree(final, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".build-{key}-"))
                try:
                    _build(requirements, tmp / "env", tmp, environ, {"UV_CACHE_DIR": str(cache / "uv-cache")},
                           relocatable=True)
                    (tmp / "env" / BUILT).write_text(requirements.read_text(errors="replace"))
                    os.rename(tmp / "env", final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                print(f"researchkit: environment {key} kept in {cache} for the next run", flush=True)
                venv.symlink_to(final, target_is_directory=True)
                return
    venv.symlink_to(final, target_is_directory=True)
    print(f"researchkit: {requirements.name} unchanged: environment {key} reused from {cache} "
          f"({time.monotonic() - t0:.2f} s)", flush=True)


def _why(output: str, requirements: Path, environ: dict[str, str]) -> str:
    """What failed, in a line: the package index, when uv could not reach it; else the first
    requirement (as requirements.txt spells it) that uv's message names; else uv's message."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("hint:")]
    said = lines[-1].removeprefix("cause: ") if lines else "no message"
    if re.search(r"Failed to fetch|error sending request|dns error|tcp connect", output):
        try:
            _open(index_url(environ), attempts=1)
        except SetupError as e:
            return str(e)
        except urllib.error.HTTPError:
            pass

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    mentioned = norm(output)
    for line in requirements.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m and re.search(rf"(?<![\w-]){re.escape(norm(m.group(1)))}(?![\w-])", mentioned):
            return f"{line.split('#')[0].strip()} cannot be installed: {said}"[:300]
    return f"uv failed: {said}"[:300]
