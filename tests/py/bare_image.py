"""Bare root filesystems for fake VMs, and the package sources those VMs install from.

A provider's default image has python3 but no pip, no python3-venv (no ensurepip) and no
cloud SDK: the startup script must install them. These artifacts let a fake VM start from
such an image and really run apt, dpkg and pip, without reaching anything but its bridge:

- `image`: Debian 12 minbase plus python3 and ca-certificates (debootstrap), stripped of
  pip, venv and the SDKs, apt's cache and lists emptied;
- `sdk_layer`: google-cloud-storage and boto3 in /usr/lib/python3/dist-packages, an overlay
  layer over the image for the "sdk-no-venv" variant;
- `no_python3_layer`: the image without python3 (the package and its /usr/bin/python3), an
  overlay layer for the "no-python3" variant;
- `wheelhouse`: wheels for the image's Python (the SDKs, pip, uv, small test packages) with
  PEP 503 simple indexes, with and without PEP 658 metadata;
- `apt_repo`: python3-venv, python3-pip and every package they need that the image lacks, and
  python3 itself (for the no-python3 variant), as a flat apt repository.

Each is built once into ${RK_TEST_CACHE:-${XDG_CACHE_HOME:-~/.cache}/researchkit-test}, in a
directory named by a hash of its inputs (the recipe's source included, so a change rebuilds),
under a lock (parallel test workers wait for one build), and renamed into place when
complete (a half-built one is never used). Building needs root, debootstrap, apt-ftparchive
(apt-utils) and access to PyPI and Debian's archive; using needs none of the last three.

    python tests/py/bare_image.py build     # build what is missing; print sizes and times
    python tests/py/bare_image.py prune     # remove artifacts the current recipes no longer name
"""

from __future__ import annotations

import fcntl
import hashlib
import html
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from researchkit_py.vm_setup import UV_VERSION  # noqa: E402

SUITE = "bookworm"
PUBLIC_MIRROR = "http://deb.debian.org/debian"  # what the image's own sources.list names, like a real image's
INCLUDE = ("python3", "ca-certificates")
# What the providers' default images lack and the startup script installs; never in the image.
ABSENT_PACKAGES = ("python3-venv", "python3-pip", "python3-pip-whl", "python3-boto3", "python3-google-cloud-storage")
ABSENT_MODULES = ("ensurepip", "pip", "google.cloud.storage", "boto3")
# The wheelhouse: the SDKs (the sdk-no-venv variant's layer), pip (measured against uv), uv at
# the version the VM fetches (test_bare_vms checks it), and what test projects' requirements name.
SDK_PACKAGES = ("google-cloud-storage", "boto3")
TEST_PACKAGES = ("tabulate",)
WHEELHOUSE_PACKAGES = (*SDK_PACKAGES, "pip", f"uv=={UV_VERSION}", *TEST_PACKAGES)
APT_PACKAGES = ("python3-venv", "python3-pip")
META = "meta.json"


# Taken when first imported (conftest imports this module): tests then run with HOME in a
# temporary directory and RK_* scrubbed, yet a build must find the cache and this machine's
# pip and apt settings where they are.
_HOST_ENV = dict(os.environ)
_DEFAULT_CACHE = Path(os.environ.get("RK_TEST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                              Path.home() / ".cache") / "researchkit-test")


def cache_root() -> Path:
    return Path(os.environ.get("RK_TEST_CACHE") or _DEFAULT_CACHE)


class Unavailable(RuntimeError):
    """Bare-image VMs cannot be had here (an artifact is missing and cannot be built, or the
    kernel refuses overlays): the message says why, in a line."""


def missing_tools() -> str | None:
    """Why artifacts cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building a bare image needs root"
    if platform.machine() != "x86_64":
        return f"bare images are made for x86_64, not {platform.machine()}"
    missing = [t for t in ("debootstrap", "apt-get", "apt-ftparchive", "bwrap") if not shutil.which(t)]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: debootstrap, apt-utils, bubblewrap)"
    return None


def _recipe(*functions: Callable) -> str:
    """A hash of the code that makes an artifact: editing it changes the artifact's name."""
    return hashlib.sha256("".join(inspect.getsource(f) for f in functions).encode()).hexdigest()[:16]


def cached(name: str, inputs: dict, build: Callable[[Path], None],
           check: Callable[[], str | None] = missing_tools) -> Path:
    """CACHE/NAME-KEY, KEY a hash of `inputs`: made once by build(directory), which gets an
    empty directory that is renamed into place only when build returns. A second process
    asking meanwhile waits on the lock, then uses the first one's result. `check` says why
    it cannot be built here, if it cannot."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / f"{name}-{key}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        reason = check()
        if reason:
            raise Unavailable(f"{final.name} is not in {cache_root()} and cannot be built: {reason}")
        for stale in final.parent.glob(f".{final.name}.part-*"):  # a build that died: we hold its lock now
            remove(stale)
        part = final.parent / f".{final.name}.part-{os.getpid()}"
        part.mkdir()
        t0 = time.monotonic()
        try:
            build(part)
            meta = {"name": name, "inputs": inputs, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - t0, 1), "bytes": _size(part)}
            (part / META).write_text(json.dumps(meta, indent=1) + "\n")
            part.rename(final)
        except BaseException:
            remove(part)
            raise
    return final


def remove(path: Path) -> None:
    """rmtree, once nothing is mounted inside: debootstrap mounts /proc and /sys in its target,
    and may bind /dev there; killed, it leaves them, and rmtree would descend into them."""
    def mounted() -> list[str]:
        inside = str(path.resolve()) + "/"
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return sorted((m for m in points if m.startswith(inside)), key=len, reverse=True)

    for point in mounted():
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    if mounted():
        raise RuntimeError(f"cannot remove {path}: still mounted inside: {', '.join(mounted())}")
    shutil.rmtree(path)


def meta(artifact: Path) -> dict:
    return json.loads((artifact / META).read_text())


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def _run(argv: list[str], log: Path | None = None, **kw) -> None:
    """Run a build step; its output goes to `log` (the error quotes the log's tail)."""
    with open(log or os.devnull, "ab") as out:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_HOST_ENV, **kw)
    if r.returncode:
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        raise RuntimeError(f"{' '.join(argv[:3])} … exited {r.returncode}\n{tail}")


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (RK_TEST_DEBIAN_MIRROR overrides): CI machines
    may reach only their own; the public archive otherwise."""
    if os.environ.get("RK_TEST_DEBIAN_MIRROR"):
        return os.environ["RK_TEST_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        text = path.read_text() if path.is_file() else ""
        for stanza in re.split(r"\n\s*\n", text):  # deb822: Types / URIs / Suites
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
        for line in text.splitlines():  # one-line format
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2) == SUITE:
                return m.group(1)
    return PUBLIC_MIRROR


def installed(rootfs: Path) -> dict[str, str]:
    """Package -> version, from the image's dpkg status."""
    out = {}
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed"):
            out[fields["Package"]] = fields["Version"]
    return out


# --- the image --------------------------------------------------------------------------
def _build_rootfs(out: Path) -> None:
    rootfs, log = out / "rootfs", out / "build.log"
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(rootfs), host_mirror()],
         log)
    present = [p for p in ABSENT_PACKAGES if p in installed(rootfs)]
    if present:
        _run(["chroot", str(rootfs), "dpkg", "--purge", *present], log)
    _run(["chroot", str(rootfs), "apt-get", "clean"], log)
    lists = rootfs / "var/lib/apt/lists"
    for p in lists.iterdir():  # partial/ stays: apt's _apt user downloads into it
        if p.is_file():
            p.unlink()
    (rootfs / "etc/apt/sources.list").write_text(f"deb {PUBLIC_MIRROR} {SUITE} main\n")
    # debootstrap copied this machine's; a cloud VM's resolver is its metadata server
    (rootfs / "etc/resolv.conf").write_text("nameserver 169.254.169.254\n")
    (rootfs / "etc/hostname").write_text("debian\n")
    for module in ABSENT_MODULES:
        r = subprocess.run(["chroot", str(rootfs), "python3", "-c", f"import {module}"], capture_output=True)
        if r.returncode == 0:
            raise RuntimeError(f"the bare image can import {module}; it must not")
    (out / "packages.json").write_text(json.dumps(installed(rootfs), indent=1, sort_keys=True) + "\n")


def image() -> Path:
    """The bare image: `image()/rootfs` is its root filesystem."""
    inputs = {"suite": SUITE, "variant": "minbase", "include": INCLUDE, "absent": ABSENT_PACKAGES,
              "recipe": _recipe(_build_rootfs)}
    return cached("debian12-bare", inputs, _build_rootfs)


def python_tags(rootfs: Path) -> dict[str, str | list[str]]:
    """pip's target options for the image's interpreter: its version, and the manylinux
    platforms its glibc runs (pip does not expand manylinux_2_X downwards itself)."""
    pkgs = installed(rootfs)
    version = ".".join(pkgs["python3"].split(".")[:2])
    glibc_minor = int(pkgs["libc6"].split(".")[1].split("-")[0])
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(glibc_minor, 16, -1)]
    return {"version": version, "platforms": [*platforms, "manylinux2014_x86_64", "manylinux2010_x86_64",
                                              "manylinux1_x86_64"]}


def _pip_target_args(tags: dict) -> list[str]:
    abi = "cp" + str(tags["version"]).replace(".", "")
    return ["--only-binary=:all:", "--python-version", str(tags["version"]), "--implementation", "cp", "--abi", abi,
            *[a for p in tags["platforms"] for a in ("--platform", p)]]


# --- the wheelhouse ---------------------------------------------------------------------
def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _build_wheelhouse(out: Path, tags: dict) -> None:
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(out),
          *_pip_target_args(tags), *WHEELHOUSE_PACKAGES], out / "build.log")
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(out.glob("*.whl")):
        projects.setdefault(_normalize(wheel.name.split("-")[0]), []).append(wheel)
        with zipfile.ZipFile(wheel) as z:  # PEP 658: the wheel's METADATA beside it, as PyPI serves it
            Path(f"{wheel}.metadata").write_bytes(
                z.read(next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))))
    page = "<!DOCTYPE html><html><body>\n{}\n</body></html>\n"
    # Two indexes of the same files: `simple/` without PEP 658's attributes (Ubuntu 22.04's pip
    # 22.0 ignores them anyway), `simple-pep658/` with them, as PyPI serves them today.
    for index, pep658 in (("simple", False), ("simple-pep658", True)):
        (out / index).mkdir()
        (out / index / "index.html").write_text(page.format("\n".join(f'<a href="{p}/">{p}</a>' for p in projects)))
        for project, wheels in projects.items():
            links = []
            for w in wheels:
                attrs = ""
                if pep658:
                    digest = f"sha256={hashlib.sha256(Path(f'{w}.metadata').read_bytes()).hexdigest()}"
                    attrs = f' data-core-metadata="{digest}" data-dist-info-metadata="{digest}"'
                digest = hashlib.sha256(w.read_bytes()).hexdigest()
                links.append(f'<a href="../../{html.escape(w.name)}#sha256={digest}"{attrs}>{html.escape(w.name)}</a>')
            (out / index / project).mkdir()
            (out / index / project / "index.html").write_text(page.format("\n".join(links)))


def wheelhouse(rootfs: Path) -> Path:
    """Wheels for the image's Python; `simple/` and `simple-pep658/` are their PEP 503 indexes."""
    tags = python_tags(rootfs)
    inputs = {"packages": WHEELHOUSE_PACKAGES, "tags": tags, "recipe": _recipe(_build_wheelhouse, _pip_target_args)}
    return cached("wheelhouse", inputs, lambda out: _build_wheelhouse(out, tags))


# --- the SDK layer ----------------------------------------------------------------------
def _build_sdk_layer(out: Path, rootfs: Path, wheels: Path) -> None:
    site = out / "usr/lib/python3/dist-packages"
    _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--find-links",
          str(wheels), "--target", str(site), "--no-compile", *_pip_target_args(python_tags(rootfs)), *SDK_PACKAGES],
         out / "build.log")
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts pip put there, not on any PATH
    # compiled by the image's own interpreter, as Debian's packages are at install time
    _run(["bwrap", "--ro-bind", str(rootfs), "/", "--bind", str(site), "/usr/lib/python3/dist-packages",
          "--dev", "/dev", "--proc", "/proc", "python3", "-m", "compileall", "-q", "/usr/lib/python3/dist-packages"],
         out / "build.log")


def sdk_layer(rootfs: Path, wheels: Path) -> Path:
    """An overlay layer: the SDKs importable by the image's python3, no pip, no venv."""
    inputs = {"packages": SDK_PACKAGES, "image": rootfs.parent.name, "wheelhouse": wheels.name,
              "recipe": _recipe(_build_sdk_layer)}
    return cached("sdk-layer", inputs, lambda out: _build_sdk_layer(out, rootfs, wheels))


# --- the no-python3 layer ------------------------------------------------------------------
def _build_no_python3_layer(out: Path, rootfs: Path) -> None:
    """python3 taken off the image, as an image without it would have it: /usr/bin/python3 leads
    nowhere, and dpkg's status has neither `python3` nor `python3-minimal` (which ships that
    link); python3.11 stays, and `apt-get install python3` brings both back from the apt
    repository."""
    (out / "usr/bin").mkdir(parents=True)
    (out / "usr/bin/python3").symlink_to("python3-not-installed")
    stanzas = (rootfs / "var/lib/dpkg/status").read_text().split("\n\n")
    (out / "var/lib/dpkg").mkdir(parents=True)
    (out / "var/lib/dpkg/status").write_text("\n\n".join(
        st for st in stanzas if not re.match(r"Package: python3(-minimal)?\n", st)))


def no_python3_layer(rootfs: Path) -> Path:
    inputs = {"image": rootfs.parent.name, "recipe": _recipe(_build_no_python3_layer)}
    return cached("no-python3-layer", inputs, lambda out: _build_no_python3_layer(out, rootfs))


# --- the apt repository -----------------------------------------------------------------
def _build_apt_repo(out: Path, rootfs: Path) -> None:
    """apt on this machine, but with the image's dpkg status and the image's suite: it downloads
    exactly what `apt-get install` of these packages would fetch on the image."""
    work, log = out / ".work", out / "build.log"
    (work / "lists/partial").mkdir(parents=True)
    (work / "archives/partial").mkdir(parents=True)
    keyring = rootfs / "usr/share/keyrings/debian-archive-keyring.gpg"
    (work / "sources.list").write_text(f"deb [signed-by={keyring}] {host_mirror()} {SUITE} main\n")
    apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
           "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::State::Lists={work / 'lists'}",
           "-o", f"Dir::State::status={rootfs / 'var/lib/dpkg/status'}", "-o", f"Dir::Cache={work}",
           "-o", f"Dir::Cache::Archives={work / 'archives'}", "-o", "Debug::NoLocking=1"]
    _run([*apt, "update"], log)
    # python3-venv as the startup script installs it (Recommends included, apt's default);
    # python3-pip without its Recommends (a compiler toolchain): install it with --no-install-recommends
    _run([*apt, "install", "--download-only", "-y", "python3-venv"], log)
    _run([*apt, "install", "--download-only", "-y", "--no-install-recommends", *APT_PACKAGES], log)
    _run([*apt, "install", "--download-only", "-y", "--reinstall", "--no-install-recommends", "python3",
          "python3-minimal"], log)
    for deb in (work / "archives").glob("*.deb"):
        deb.rename(out / deb.name)
    shutil.rmtree(work)
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=out, check=True, capture_output=True).stdout
    (out / "Packages").write_bytes(packages)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=out, check=True, capture_output=True).stdout
    (out / "Release").write_bytes(release)


def apt_repo(rootfs: Path) -> Path:
    """A flat apt repository: `deb [trusted=yes] URL/ ./` in a VM's sources.list."""
    inputs = {"packages": APT_PACKAGES, "image": rootfs.parent.name, "recipe": _recipe(_build_apt_repo)}
    return cached("apt-repo", inputs, lambda out: _build_apt_repo(out, rootfs))


# --- all of them, and VMs booting from them ----------------------------------------------
VARIANTS = {"bare": (), "sdk-no-venv": ("sdk_layer",), "no-python3": ("no_python3_layer",)}  # -> layers over the image

def build_all() -> dict[str, Path]:
    """Every artifact, built where missing: what CI calls before the tests."""
    img = image()
    rootfs = img / "rootfs"
    wheels = wheelhouse(rootfs)
    return {"image": img, "wheelhouse": wheels, "sdk_layer": sdk_layer(rootfs, wheels),
            "no_python3_layer": no_python3_layer(rootfs), "apt_repo": apt_repo(rootfs)}


class BareImages:
    """The artifacts (built where missing) and a PackageServer on `host`, the VM bridge."""

    def __init__(self, host: str):
        from package_server import PackageServer

        self.artifacts = build_all()
        _probe_overlay()
        self.server = PackageServer(host, self.artifacts["wheelhouse"], self.artifacts["apt_repo"])

    def image(self, variant: str = "bare", *, package_sources: bool = True, dpkg_lock_seconds: float = 0,
              pep658: bool = False):
        """A fake_vm.VMImage. `variant`: "bare" (python3 only), "sdk-no-venv" (the SDKs importable
        by python3, still no pip or venv) or "no-python3" (not even python3; apt can install it). Without `package_sources` the VM keeps the image's own
        sources.list and pip's default index, neither of which it can reach. With `pep658` its
        index offers PEP 658 metadata files, as PyPI does (see BARE_IMAGES.md)."""
        from fake_vm import VMImage

        if variant not in VARIANTS:
            raise ValueError(f"unknown bare image variant {variant!r}; one of {', '.join(VARIANTS)}")
        layers = (*(self.artifacts[a] for a in VARIANTS[variant]), self.artifacts["image"] / "rootfs")
        env, files = self.server.vm_settings(pep658) if package_sources else ({}, {})
        return VMImage(layers=layers, env=env, files=files, dpkg_lock_seconds=dpkg_lock_seconds)

    def stop(self) -> None:
        self.server.stop()


def _probe_overlay() -> None:
    """Fake VMs mount an overlay in a private mount namespace: check that this kernel lets us."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for sub in ("lower", "upper", "work", "root"):
            os.mkdir(os.path.join(d, sub))
        opts = f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work"
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "overlay", "overlay",
                            "-o", opts, f"{d}/root"], capture_output=True, text=True)
    if r.returncode:
        raise Unavailable(f"cannot mount an overlay filesystem here: {r.stderr.strip()}")


def _main(argv: list[str]) -> int:
    if argv not in (["build"], ["prune"]):
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    reason = missing_tools()
    if reason:
        print(f"bare_image: cannot build: {reason}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    artifacts = build_all()
    if argv == ["prune"]:
        keep = {p.name for p in artifacts.values()}
        for old in cache_root().glob("*-*"):
            if old.is_dir() and old.name not in keep and (old / META).exists():
                remove(old)
                print(f"removed {old}")
        return 0
    for what, path in artifacts.items():
        m = meta(path)
        print(f"{what:16} {m['bytes'] / 1e6:7.1f} MB  built in {m['build_seconds']:6.1f} s on {m['built_at']}  {path}")
    print(f"ready in {time.monotonic() - t0:.1f} s (cache: {cache_root()})")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
