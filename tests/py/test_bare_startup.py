"""The startup script on a bare image (bare_image.py), GCE and EC2: `cloud-run run` end to end,
the VM reporting with python3's standard library alone, fetching uv and installing the
project's requirements from the wheelhouse; and when that goes wrong: no package index, apt's
lock held at boot, the SDK on the image but no venv, a requirement that cannot be installed,
an index that serves PEP 658 metadata (as PyPI does).

Each VM's script is traced (bash xtrace, timed); with RK_BARE_TIMINGS=FILE, each run's setup
split is appended to FILE as a JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import setup_trace

REPO = Path(__file__).resolve().parents[2]
TIMINGS = os.environ.get("RK_BARE_TIMINGS")  # read at import: each test runs with RK_* scrubbed
COMMAND = ("python -c 'import os, tabulate; "
           "open(os.environ[\"RESULTS_DIR\"] + \"/table.txt\", \"w\").write(tabulate.tabulate([[1, 2]]))'")
@pytest.fixture(params=["gce", "ec2"])
def cloud(request, project):
    """(provider, its FakeVMs), the VMs' startup scripts traced."""
    fake = request.getfixturevalue(request.param)
    vms = fake.vms if request.param == "gce" else fake
    vms.trace_startup = True
    (project / "requirements.txt").write_text("tabulate\n")
    return request.param, vms


@dataclass
class Outcome:
    rc: int
    wall: float
    stderr: str
    bucket: list[str]  # the run's keys in the bucket
    status: dict | None
    log: str | None  # the run's log in the bucket
    vm_log: str  # the run's log on the VM's disk


def run(provider: str, vms, tmp_path: Path, case: str) -> Outcome:
    """`cloud-run run COMMAND` in the foreground; what it said, and what reached the bucket."""
    from researchkit_py.lifecycle import Context
    from researchkit_py.settings import Settings

    t0 = time.monotonic()
    r = subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", provider, "run", COMMAND, "--output-dir",
                        str(tmp_path / "out")], capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    wall = time.monotonic() - t0
    vms.wait_all_gone()
    prefix = f"runs/{r.stdout.strip()}/"
    store = Context.open(Settings(), provider).store
    keys = sorted(o.key.removeprefix(prefix) for o in store.list(prefix))
    log = store.get_bytes(prefix + "logs/run.log").decode() if "logs/run.log" in keys else None
    (vm,) = vms.vms.values()
    vm_log = "".join(p.read_text() for p in (vm["root"] / "var").glob("*/run.log"))
    out = Outcome(r.returncode, wall, r.stderr, keys, store.read_json_or_none(prefix + "status.json"), log, vm_log)
    if TIMINGS:
        with open(TIMINGS, "a") as f:
            f.write(json.dumps({"provider": provider, "case": case, "rc": out.rc, "wall": round(wall, 1),
                                "bucket": keys, **setup_split(vms)}) + "\n")
    return out


def setup_split(vms) -> dict:
    """The (one) VM's setup, step by step (setup_trace.py)."""
    (vm,) = vms.vms.values()
    (log,) = (vm["root"] / "var").glob("*/run.log")
    return setup_trace.setup_split(log.read_text())


def setup_failed(out: Outcome, step: str) -> None:
    """The run failed in its setup, and everyone says why: the status (cause, stage, the step and
    its reason), the log in the bucket, the client's last line — said by the VM, never `lost`.
    (How soon is the retry policy's business, tested below without a clock: a timed assertion
    here failed on a loaded machine.)"""
    assert out.rc == 125, out.stderr
    assert (out.status["phase"], out.status["cause"], out.status["stage"]) == ("FAILED", "boot_error", "SETUP")
    assert out.status["step"].startswith(step), out.status
    assert out.status["step"] in out.log and f"FAILED (boot_error: {out.status['step']})" in out.stderr


@pytest.mark.parametrize("error,attempts", [
    (socket.gaierror(-3, "Temporary failure in name resolution"), 3),  # a resolver still starting
    (OSError(101, "Network is unreachable"), 1),  # no route: a VM without an external address
    (ConnectionRefusedError(111, "Connection refused"), 1),
    (TimeoutError("timed out"), 1),  # 15 s without an answer: packets dropped, no NAT
])
def test_only_a_name_that_does_not_resolve_is_tried_again(monkeypatch, error, attempts):
    import urllib.error

    from researchkit_py import vm_setup

    calls, slept = [], []

    def urlopen(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError(error)

    monkeypatch.setattr(vm_setup.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(vm_setup.time, "sleep", slept.append)
    with pytest.raises(vm_setup.SetupError, match=r"cannot reach the package index https://pypi\.org \("):
        vm_setup._open("https://pypi.org/simple/uv/")
    assert len(calls) == attempts and all(t == 15 for _, t in calls)
    assert slept == [1, 2][:attempts - 1]


@pytest.mark.waits(20)
@pytest.mark.vm_image("bare")
def test_a_bare_image_sets_itself_up_in_seconds(cloud, tmp_path):
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "bare")
    assert out.rc == 0, out.stderr + vms.consoles()
    assert (tmp_path / "out" / "table.txt").read_text().startswith("-  -\n1  2")
    split = setup_split(vms)
    assert {"status BOOT", "requirements.txt", "  uv", "  install"} <= set(split["steps"]), split
    assert split["before_command"] < 10, split
    assert "image: Debian GNU/Linux 12 (bookworm), python 3.11" in out.log and "no pip, venv" in out.log
    assert "fetched uv-" in out.log and "tabulate==" in out.log
    assert "apt" not in out.vm_log.replace("apt.log", "")  # nothing of apt runs: python3 is there


@pytest.mark.waits(20)
@pytest.mark.vm_image("bare")
def test_a_requirement_that_cannot_be_installed_is_named(cloud, project, tmp_path):
    provider, vms = cloud
    (project / "requirements.txt").write_text("tabulate\nresearchkit-no-such-package==0.0.1  # mine\n")
    out = run(provider, vms, tmp_path, "bad requirement")
    setup_failed(out, "installing requirements.txt: researchkit-no-such-package==0.0.1 cannot be installed: ")
    assert "debconf" not in out.log and "Unpacking" not in out.log


@pytest.mark.vm_image("bare", package_sources=False)
def test_an_unreachable_package_index_is_the_cause(cloud, tmp_path):
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "index unreachable")
    setup_failed(out, "installing requirements.txt: cannot reach the package index https://pypi.org (")


@pytest.mark.vm_image("bare", dpkg_lock_seconds=30)
def test_apt_lock_held_at_boot_does_not_matter(cloud, tmp_path):
    """unattended-upgrades holds apt's lock at a first boot; the setup uses no apt (uv needs none)."""
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "apt lock held 30 s")
    assert out.rc == 0, out.stderr + vms.consoles()
    assert out.status["phase"] == "DONE" and setup_split(vms)["before_command"] < 10


@pytest.mark.waits(20)
@pytest.mark.vm_image("no-python3", dpkg_lock_seconds=20)
def test_an_image_without_python3_gets_it_from_apt_once_apts_lock_is_free(cloud, tmp_path):
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "no python3, apt lock held 20 s")
    assert out.rc == 0, out.stderr + vms.consoles()
    assert "installing python3 with apt (the image has none)" in out.log
    assert setup_split(vms)["steps"]["python3 with apt"] >= 15  # it waited for the lock, then went on
    assert "Unpacking" not in out.log and "debconf" not in out.log  # apt's output stays in apt.log


@pytest.mark.vm_image("no-python3", package_sources=False)
def test_an_image_without_python3_or_apt_says_why_on_its_console(cloud, tmp_path):
    """Nothing can report to the bucket without python3: the run is lost, the VM goes, and its
    console (the cloud's serial port output, while it exists) keeps the reason."""
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "no python3, no apt")
    assert out.rc == 125 and "FAILED (lost" in out.stderr and out.status is None, out.stderr
    (vm,) = vms.vms.values()
    assert "researchkit: no python3, so nothing can report to the bucket" in (vm["root"] / "console.log").read_text()


@pytest.mark.vm_image("sdk-no-venv")
def test_an_image_with_the_sdk_but_no_venv_installs_the_requirements(cloud, tmp_path):
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "sdk, no venv")
    assert out.rc == 0, out.stderr + vms.consoles()
    assert out.status["phase"] == "DONE"


@pytest.mark.vm_image("bare", pep658=True)
def test_requirements_install_from_an_index_that_serves_pep658_metadata(cloud, tmp_path):
    """PyPI serves PEP 658 metadata files, which Debian 12's pip 23.0.1 mishandles
    (pypa/pip#12108); uv reads them."""
    provider, vms = cloud
    out = run(provider, vms, tmp_path, "PEP 658 index")
    assert out.rc == 0, out.stderr + vms.consoles()
    assert out.status["phase"] == "DONE"
