"""The VM's setup, standard library only: the project's requirements.txt installed into a venv
by uv — found on the image, or fetched from the package index as a wheel — with a cause that
names what failed.

The index is UV_INDEX_URL (PyPI's by default): the tests serve a wheelhouse on their network
and say so through it; nothing else differs from a real VM.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import platform
import re
import shutil
import socket
import subprocess
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
    line in the log says what was installed, and how long each part took."""
    t0 = time.monotonic()
    uv = find_uv(root, environ)
    took = {"uv": time.monotonic() - t0}
    env = {"UV_CACHE_DIR": str(root / "uv-cache"), **environ}  # beside the venv: uv links from its cache
    out = ""
    for part, argv in (("venv", [uv, "venv", "--quiet", "--system-site-packages", "--python", "python3", str(venv)]),
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
