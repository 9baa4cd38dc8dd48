"""Every test runs with HOME, the tool's state and the project in tmp_path, and no real
cloud credentials or settings from the developer's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from emulators import FakeGCS, Moto  # noqa: E402

SCRUB = ("COMPUTE_TARGET", "RK_", "EXP_", "KIT_", "AWS_", "GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR_HOST",
         "ORCHESTRATION_KIT_ROOT")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith(SCRUB):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RK_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("RK_NO_PROGRESS", "1")
    monkeypatch.setenv("RK_STORAGE_BACKOFF", "0.01")
    monkeypatch.setenv("RK_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("RK_POLL_SECONDS", "0.1")
    monkeypatch.setenv("RK_LOCAL_GRACE", "3")
    monkeypatch.setenv("RK_REAP_INTERVAL", "0")  # every invocation reaps; test_reaper_runs_at_most_... checks the default
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield tmp_path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A small git project, the cwd of the test."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text("print('training')\n")
    (root / "results").mkdir()
    (root / "results" / "old.txt").write_text("previous results\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("EXP_PROJECT_ROOT", str(root))
    return root


@pytest.fixture(scope="session")
def gcs_server():
    server = FakeGCS()
    yield server
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    from researchkit_py.storage.gcs import gcs_client

    name = f"b-{uuid.uuid4().hex[:12]}"
    gcs_client().create_bucket(name)
    return name


@pytest.fixture(scope="session")
def moto_server():
    server = Moto()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    from researchkit_py.storage.s3 import s3_client

    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def vm_network():
    """The bridge fake VMs' namespaces join, or None (with the reason) where namespaces are unavailable."""
    from fake_vm import VMNetwork

    reason = VMNetwork.available()
    if reason:
        VM_ISOLATION["reason"] = reason
        yield None
        return
    net = VMNetwork(subnet=os.getpid() % 200 + 20)
    try:
        yield net
    finally:
        net.stop()


VM_ISOLATION = {"reason": ""}


@pytest.fixture(scope="session")
def vm_gcs(vm_network, gcs_server):
    """The storage emulator the fake VMs reach: on the VM bridge when there is one."""
    if vm_network is None:
        yield gcs_server
        return
    server = FakeGCS(host=vm_network.host_ip)
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter):
    from fake_vm import FakeVMs

    booted = FakeVMs.booted
    if booted["netns"] or booted["process"]:
        why = f" (network namespaces unavailable: {VM_ISOLATION['reason']})" if VM_ISOLATION["reason"] else ""
        terminalreporter.write_line(f"fake VMs: {booted['netns']} booted in their own network namespace, "
                                    f"{booted['process']} as plain processes{why}")


@pytest.fixture(params=["local", "gcs", "s3"])
def store(request, tmp_path):
    """The same Store contract, on each backend against its emulator."""
    from researchkit_py.storage import open_store

    if request.param == "local":
        return open_store(f"file://{tmp_path / 'bucket'}")
    if request.param == "gcs":
        return open_store(f"gs://{request.getfixturevalue('gcs_bucket')}/pre/fix")
    return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/pre/fix")
