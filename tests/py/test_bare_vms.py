"""Fake VMs booted from a bare image (bare_image.py): what the image lacks, what the VM can
reach, and the package sources on its bridge that the startup script's installs use."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import bare_image
import pytest
from fake_vm import FakeVMs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm_image("bare")


@pytest.fixture
def vms(vm_network, vm_image, tmp_path):
    """VMs booted from the test's bare image (its vm_image mark), with no cloud API around them."""
    assert vm_image is not None
    vms = FakeVMs(tmp_path / "vms", {}, vm_network, vm_image)
    try:
        yield vms
    finally:
        vms.stop()


def run_vm(vms: FakeVMs, script: str, timeout: float = 180) -> tuple[int, str]:
    """Boot a VM from `script` (bash), wait for it to end: (exit status, its console)."""
    name = f"bare-{uuid.uuid4().hex[:8]}"
    vms.boot(f"#!/bin/bash\n{script}", {"flavor": "gce", "name": name, "zone": "us-central1-a", "project": "p"})
    rc = vms.vms[name]["proc"].wait(timeout)
    return rc, (vms.vms[name]["root"] / "console.log").read_text()


def test_image_has_python3_and_bash_but_no_pip_venv_or_sdk(vms):
    rc, out = run_vm(vms, f"""
python3 -c 'import sys; print("python", sys.version_info[0], sys.version_info[1])'
echo "bash $BASH_VERSION"
for m in pip ensurepip google.cloud.storage boto3; do python3 -c "import $m" 2>/dev/null && echo "importable $m"; done
python3 -m venv /tmp/v >/dev/null 2>&1 || echo "no venv"
for t in pip pip3 uv gcloud aws curl; do command -v "$t" && echo "found $t"; done
[[ -e {REPO} ]] && echo "sees the host's files"
echo "hostname $(hostname)"
""")
    assert rc == 0, out
    assert "python 3 11" in out and "bash 5." in out and "no venv" in out
    assert "importable" not in out and "found" not in out and "sees the host" not in out
    assert re.search(r"hostname bare-\w{8}", out)


PROBE = r"""
import json, os, socket, urllib.request
def reach(url, headers={}):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).status
    except OSError as e:
        return type(e).__name__ + ": " + str(getattr(e, "reason", e))
def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
print(json.dumps({
    "index": reach(os.environ["PIP_INDEX_URL"]),
    "metadata": reach("http://metadata.google.internal/computeMetadata/v1/instance/name",
                      {"Metadata-Flavor": "Google"}),
    "internet": connect("192.0.2.1", 80),  # TEST-NET-1: with no route, no packet leaves
    "host_loopback": connect("127.0.0.1", int(os.environ["HOST_PORT"])),
    "dns": connect("deb.debian.org", 80),
}))
"""


def test_vm_reaches_its_bridge_and_metadata_server_only(vms):
    with socket.socket() as listener:  # on this machine's loopback: not the VM's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        vms.image.env["HOST_PORT"] = str(listener.getsockname()[1])
        rc, out = run_vm(vms, f"python3 - <<'EOF'\n{PROBE}\nEOF")
    assert rc == 0, out
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"index": 200, "metadata": 200, "internet": "OSError", "host_loopback": "ConnectionRefusedError",
                    "dns": "gaierror"}, out


def test_apt_installs_python3_venv_from_the_local_repository_and_pip_uses_the_wheelhouse(vms, bare_images):
    """The startup script's install path, for real: apt-get, dpkg, ensurepip, pip."""
    rc, out = run_vm(vms, """set -euo pipefail
apt-get update -qq
apt-get install -y -qq python3-venv >/dev/null
python3 -m venv /tmp/v
/tmp/v/bin/pip install --quiet tabulate
/tmp/v/bin/python -c 'import tabulate; print("tabulate", tabulate.__version__)'
""")
    assert rc == 0, out
    assert "tabulate 0." in out
    fetched = bare_images.server.requests
    assert any(re.fullmatch(r"/apt/(\./)?python3\.11-venv_.*\.deb", p) for p in fetched), fetched
    assert "/wheels/simple/tabulate/" in fetched and any(p.startswith("/wheels/tabulate-") for p in fetched)
    (vm,) = vms.vms.values()
    layer = vms.root / ".layers" / vm["root"].name / "upper"
    assert "python3-venv" in bare_image.installed(layer)  # dpkg wrote the VM's own status file...
    assert "python3-venv" not in bare_image.installed(vms.image.layers[-1])  # ...and left the image alone


UV_FROM_THE_INDEX = r"""
import io, os, re, urllib.request, zipfile
index = os.environ["UV_INDEX_URL"]
page = urllib.request.urlopen(index + "uv/").read().decode()
wheel = urllib.request.urljoin(index + "uv/", re.findall(r'href="([^"#]+)', page)[-1])
with zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(wheel).read())) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/uv"))
    open("/tmp/uv", "wb").write(z.read(name))
os.chmod("/tmp/uv", 0o755)
"""


def test_uv_from_the_wheelhouse_makes_a_venv_without_python3_venv(vms):
    """The standard library can fetch uv (a static binary in a wheel); uv needs no ensurepip."""
    rc, out = run_vm(vms, f"""set -euo pipefail
python3 - <<'EOF'
{UV_FROM_THE_INDEX}
EOF
/tmp/uv venv --quiet --python /usr/bin/python3 /tmp/v
/tmp/uv pip install --quiet --python /tmp/v/bin/python tabulate
/tmp/v/bin/python -c 'import tabulate; print("tabulate", tabulate.__version__)'
""")
    assert rc == 0, out
    assert "tabulate 0." in out


@pytest.mark.vm_image("sdk-no-venv")
def test_sdk_variant_imports_the_sdks_but_still_has_no_venv(vms):
    rc, out = run_vm(vms, """python3 -c 'import google.cloud.storage, boto3; print("sdk ok")'
python3 -m venv /tmp/v >/dev/null 2>&1 || echo "no venv"
""")
    assert rc == 0, out
    assert "sdk ok" in out and "no venv" in out


@pytest.mark.vm_image("bare", dpkg_lock_seconds=5)
def test_held_dpkg_lock_makes_apt_wait(vms):
    rc, out = run_vm(vms, """
echo "start $EPOCHREALTIME"
apt-get update -qq && echo "update ran while locked"
apt-get -o DPkg::Lock::Timeout=0 install -y; echo "no wait: rc $?"
apt-get -o DPkg::Lock::Timeout=60 install -y >/dev/null 2>&1; echo "waited: rc $?"
echo "end $EPOCHREALTIME"
""")
    assert rc == 0, out
    assert "update ran while locked" in out
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in out and "no wait: rc 100" in out
    assert "waited: rc 0" in out
    start, end = (float(re.search(rf"{w} ([\d.]+)", out).group(1)) for w in ("start", "end"))
    assert end - start >= 4, out  # it waited for the lock (held 5 s) and then got it: rc 0 above


@pytest.mark.vm_image("bare", package_sources=False)
def test_without_package_sources_apt_and_pip_cannot_reach_an_index(vms):
    rc, out = run_vm(vms, """
echo "start $EPOCHREALTIME"
apt-get update -qq; echo "update: rc $? at $EPOCHREALTIME"
apt-get install -y -qq python3-venv; echo "install: rc $? at $EPOCHREALTIME"
""", timeout=60)
    assert rc == 0, out
    assert "Temporary failure resolving 'deb.debian.org'" in out and "update: rc 0" in out
    assert "Package 'python3-venv' has no installation candidate" in out and "install: rc 100" in out


# --- the cache, and what the wheelhouse holds: no VM, no root ---------------------------
def test_cached_artifacts_are_built_once_atomically_and_keyed_by_their_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("RK_TEST_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(out: Path) -> None:
        builds.append(out)
        time.sleep(0.3)  # long enough for the second caller to arrive while this one builds
        (out / "content").write_text("made")

    got: list[Path] = []
    workers = [threading.Thread(target=lambda: got.append(bare_image.cached("x", {"v": 1}, build, lambda: None)))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(builds) == 1 and got[0] == got[1] and (got[0] / "content").read_text() == "made"
    assert bare_image.meta(got[0])["inputs"] == {"v": 1} and bare_image.meta(got[0])["build_seconds"] >= 0.3
    assert bare_image.cached("x", {"v": 2}, build, lambda: None) != got[0] and len(builds) == 2

    def broken(out: Path) -> None:
        (out / "half").write_text("")
        raise OSError("the mirror went away")

    with pytest.raises(OSError):
        bare_image.cached("y", {}, broken, lambda: None)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == \
        sorted(p.name for p in got[:1] + [bare_image.cached("x", {"v": 2}, build, lambda: None)])
    with pytest.raises(bare_image.Unavailable, match="cannot be built: no debootstrap here"):
        bare_image.cached("z", {}, build, lambda: "no debootstrap here")


def test_wheelhouse_holds_the_uv_the_startup_script_fetches(bare_images):
    from researchkit_py.vm_setup import UV_VERSION

    wheels = bare_images.artifacts["wheelhouse"]
    assert list(wheels.glob(f"uv-{UV_VERSION}-py3-none-manylinux*_x86_64.whl")), sorted(p.name for p in wheels.glob("uv-*"))


def test_package_server_serves_both_trees_byte_ranges_and_nothing_else(tmp_path):
    from package_server import PackageServer

    wheels, apt = tmp_path / "wheels", tmp_path / "apt"
    (wheels / "simple").mkdir(parents=True)
    (wheels / "x-1-py3-none-any.whl").write_bytes(bytes(range(256)))
    apt.mkdir()
    (apt / "Packages").write_text("Package: p\n")
    server = PackageServer("127.0.0.1", wheels, apt)
    try:
        def get(path: str, **headers: str):
            return urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers), timeout=5)

        whole = get("/wheels/x-1-py3-none-any.whl")
        assert whole.status == 200 and whole.read() == bytes(range(256)) and whole.headers["Accept-Ranges"] == "bytes"
        tail = get("/wheels/x-1-py3-none-any.whl", Range="bytes=-16")  # how uv reads a wheel's metadata
        assert (tail.status, tail.headers["Content-Range"]) == (206, "bytes 240-255/256")
        assert tail.read() == bytes(range(240, 256))
        assert get("/wheels/x-1-py3-none-any.whl", Range="bytes=10-19").read() == bytes(range(10, 20))
        assert get("/apt/Packages").read() == b"Package: p\n"
        for outside in ("/wheels/../apt/Packages", "/etc/passwd", "/apt/../../etc/passwd"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                get(outside)
        env, files = server.vm_settings()
        assert env["PIP_INDEX_URL"] == env["UV_INDEX_URL"] == f"{server.url}/wheels/simple/"
        assert server.vm_settings(pep658=True)[0]["PIP_INDEX_URL"] == f"{server.url}/wheels/simple-pep658/"
        assert files == {"/etc/apt/sources.list": f"deb [trusted=yes] {server.url}/apt ./\n"}
        assert server.requests[:2] == ["/wheels/x-1-py3-none-any.whl"] * 2
    finally:
        server.stop()


def test_removing_a_half_built_artifact_unmounts_what_a_killed_debootstrap_left(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    part = tmp_path / ".debian12-bare-x.part-1"
    (part / "rootfs/proc").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(part / "rootfs/proc")], check=True)
    try:
        (part / "rootfs/proc/kept").write_text("on the mounted filesystem")
        bare_image.remove(part)
        assert not part.exists()
    finally:
        subprocess.run(["umount", str(part / "rootfs/proc")], capture_output=True)


@pytest.mark.vm_image("no-python3")
def test_no_python3_variant_has_none_until_apt_installs_it(vms):
    rc, out = run_vm(vms, """command -v python3 || echo "no python3"
apt-get update -qq && apt-get install -y -q --no-install-recommends python3
python3 -c 'import sys; print("python", sys.version_info[:2])'
""")
    assert rc == 0, out
    assert "no python3" in out and "python (3, 11)" in out
