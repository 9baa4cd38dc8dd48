"""Every test runs with HOME, the tool's state and the project in tmp_path, and no real
cloud credentials or settings from the developer's environment."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import bare_image  # noqa: E402 - before any test changes HOME: it finds its cache from there
from emulators import FAKE_SECRET, FakeGCS, Moto, MotoProcess, ubuntu_amis  # noqa: E402
from fake_gce import FakeGCE  # noqa: E402
from fake_vm import EC2VMs, GCEVMs  # noqa: E402
from model_api import AGENT_BIN, CYCLES, INSTALLER  # noqa: E402

# A suite started as a script's background job (or under nohup) has SIGINT (or HUP) ignored and
# passes that on to every child, and the kit rightly leaves an inherited ignore alone: the tests
# interrupt their children as a terminal would, so theirs start with the defaults.
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT else signal.SIG_DFL)

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
    monkeypatch.setenv("RK_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RK_NO_PROGRESS", "1")
    monkeypatch.setenv("RK_STORAGE_BACKOFF", "0.01")
    monkeypatch.setenv("RK_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("RK_POLL_SECONDS", "0.1")
    monkeypatch.setenv("RK_LOCAL_GRACE", "3")
    monkeypatch.setenv("RK_REAP_INTERVAL", "0")  # every invocation reaps; test_reaper_runs_at_most_... checks the default
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield tmp_path
    ignored = [s.name for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_IGN]
    assert not ignored, f"the test left {ignored} ignored in its worker: every later child would inherit that"


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
    from researchkit_py.clouds.gce.store import gcs_client

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
    name = f"b-{uuid.uuid4().hex[:12]}"
    moto_client("s3").create_bucket(Bucket=name)
    return name


@functools.cache
def _moto_client(service: str, *aws_env: str):
    from researchkit_py.clouds.ec2.aws import aws_client

    return aws_client(service)


def moto_client(service: str):
    """The tests' own boto3 client of their moto, one per service and credentials in a worker: one
    made anew for each test cost 0.1–0.2 s of CPU (a new session loads the service's model again),
    four in every EC2 test's setup."""
    return _moto_client(service, *(os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                           "AWS_SECRET_ACCESS_KEY", "AWS_REGION")))


@pytest.fixture(scope="session")
def vm_network():
    """The bridge fake VMs' namespaces join, or None (with the reason) where namespaces are unavailable."""
    from fake_vm import VMNetwork

    reason = VMNetwork.available()
    if reason:
        VM_ISOLATION["reason"] = reason
        yield None
        return
    net = VMNetwork()
    try:
        yield net
    finally:
        net.stop()


VM_ISOLATION = {"reason": "", "bare": ""}


def _on_vm_bridge(vm_network, local_server, make):
    """An emulator where the fake VMs can reach it: on the VM bridge when there is one."""
    if vm_network is None:
        yield local_server
        return
    server = make(host=vm_network.host_ip)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vm_gcs(vm_network, gcs_server):
    yield from _on_vm_bridge(vm_network, gcs_server, FakeGCS)


@pytest.fixture(scope="session")
def available_bare_images(vm_network):
    """The bare image, its variants and their package sources served on the VM bridge (built
    once, then cached: tests/py/bare_image.py), or None where they cannot be had (the reason
    goes into the session's summary)."""
    if vm_network is None:
        VM_ISOLATION["bare"] = f"they need network namespaces ({VM_ISOLATION['reason']})"
        yield None
        return
    try:
        images = bare_image.BareImages(vm_network.host_ip)
    except bare_image.Unavailable as e:
        VM_ISOLATION["bare"] = str(e)
        yield None
        return
    yield images
    images.stop()


@pytest.fixture
def bare_images(available_bare_images):
    """The bare images, or a skip that says why they cannot be had here."""
    if available_bare_images is None:
        pytest.skip(f"bare-image VMs: {VM_ISOLATION['bare']}")
    return available_bare_images


@pytest.fixture
def vm_image(request, available_bare_images):
    """What the fake VMs boot from: the bare image (a fake_vm.VMImage), as a provider's default
    image would be, wherever it can be had (else this machine's root: None); for a test marked
    @pytest.mark.vm_image(variant, package_sources=True, dpkg_lock_seconds=0, pep658=False), that
    variant (variants and options: tests/py/BARE_IMAGES.md), or a skip."""
    marker = request.node.get_closest_marker("vm_image")
    if marker is None:
        return available_bare_images and available_bare_images.image("bare")
    return request.getfixturevalue("bare_images").image(*marker.args, **marker.kwargs)


def pytest_configure(config):
    config.addinivalue_line("markers", "vm_image(variant, **options): boot the test's fake VMs from a bare image")
    config.addinivalue_line("markers", "waits(seconds): the test mostly waits this long; the workers start it first")


# --- the order the workers take the tests in ----------------------------------------------------
# pytest-xdist's worksteal hands each worker an equal run of the collection, in order, and lets an
# idle worker take the second half of another's queue. A test that mostly waits (apt's lock held
# 60 s, twenty VMs booting) left to the end of a run is a tail with both cores idle; started first,
# its wait overlaps the others' CPU. So the `waits` tests lead the runs, longest first, one worker
# after another (433 s → 403 s without coverage: docs/development.md, "The suite's time").
def pytest_collection_modifyitems(config, items):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))  # set in each worker, which collects

    def seconds(item) -> float:  # `waits(60, local=0)`: the embedded provider's run does not wait
        mark = item.get_closest_marker("waits")
        cloud = getattr(item, "callspec", None) and item.callspec.params.get("cloud")
        return mark.kwargs.get(cloud, mark.args[0]) if mark else 0

    waits = sorted((i for i in items if seconds(i)), key=lambda i: -seconds(i))
    if workers < 2 or not waits:
        return
    rest = [i for i in items if not seconds(i)]
    ordered: list = []
    for k in range(workers):  # the runs worksteal cuts: what is left, shared by the workers left
        size = (len(items) - len(ordered)) // (workers - k)
        lead, take = waits[k::workers], max(0, size - len(waits[k::workers]))
        ordered += lead + rest[:take]
        del rest[:take]
    items[:] = ordered + rest


@pytest.fixture
def gce(project, vm_network, vm_gcs, vm_image, monkeypatch, tmp_path):
    """Fake Compute API + storage emulator + fake VMs (in network namespaces where possible)."""
    host = vm_network.host_ip if vm_network else "127.0.0.1"
    fake = FakeGCE(host=host)
    vms = GCEVMs(fake, tmp_path / "vms", {"STORAGE_EMULATOR_HOST": vm_gcs.url}, vm_network, vm_image)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vm_gcs.url)
    from researchkit_py.clouds.gce.store import gcs_client

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    gcs_client().create_bucket(bucket)
    monkeypatch.setenv("GCE_PROJECT", "test-proj")
    monkeypatch.setenv("RK_GCE_API_ENDPOINT", fake.url)
    monkeypatch.setenv("RK_BUCKET", f"gs://{bucket}/rk")
    monkeypatch.setenv("RK_POLL_SECONDS", "0.2")
    monkeypatch.setenv("RK_SELF_DELETE_WAIT", "20")
    fake.vms = vms
    yield fake
    vms.stop()
    fake.stop()


@pytest.fixture(scope="session")
def vm_moto(vm_network, moto_server):
    yield from _on_vm_bridge(vm_network, moto_server, MotoProcess)


@pytest.fixture
def ec2(project, vm_network, vm_moto, vm_image, monkeypatch, tmp_path):
    vm_moto.reset()
    env = {"AWS_ENDPOINT_URL": vm_moto.url, "AWS_REGION": "us-east-1"}
    for k, v in {**env, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}.items():
        monkeypatch.setenv(k, v)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    moto_client("s3").create_bucket(Bucket=bucket)
    client = moto_client("ec2")
    ami = ubuntu_amis(client)[0]
    moto_client("ssm").put_parameter(Name="/researchkit/test/ubuntu-ami", Value=ami, Type="String")
    monkeypatch.setenv("EC2_AMI_PARAM", "/researchkit/test/ubuntu-ami")
    moto_client("iam").create_instance_profile(InstanceProfileName="researchkit-vm")
    monkeypatch.setenv("EC2_INSTANCE_PROFILE", "researchkit-vm")
    monkeypatch.setenv("RK_BUCKET", f"s3://{bucket}/rk")
    monkeypatch.setenv("RK_SELF_DELETE_WAIT", "20")
    monkeypatch.setenv("RK_POLL_SECONDS", "0.2")
    vms = EC2VMs(client, tmp_path / "vms", env, vm_network, vm_image)  # no keys: IMDS gives the VM the role's
    vms.ami = ami
    yield vms
    vms.stop()


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """The bin directory of the pinned claude and codex. Without them a test skips, saying how
    to install them; under CI (CI=true) it fails: CI must run the real CLIs."""
    if AGENT_BIN is None:
        why = f"agent CLIs not installed: run {INSTALLER.relative_to(REPO)}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{why} (CI=true: the real-CLI tests must run)")
        pytest.skip(why)
    return AGENT_BIN


AGENT_OUTCOMES = {"passed": 0, "failed": 0, "skipped": 0}


# --- where the suite's CPU goes (RK_TEST_CPU=FILE) --------------------------------------------
# On two cores the suite waits on CPU, not on its sleeps: a test's cost is its CPU seconds, this
# process's (the test, its in-thread servers) and its finished children's (CLIs, fake VMs).
# One JSON line per test is appended to FILE, from every worker.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    out = os.environ.get("RK_TEST_CPU")
    if not out:
        yield
        return
    import json
    import resource
    import time

    def cpu(who: int) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    own, children, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.monotonic()
    yield
    line = {"test": item.nodeid, "cpu_own": round(cpu(resource.RUSAGE_SELF) - own, 2),
            "cpu_children": round(cpu(resource.RUSAGE_CHILDREN) - children, 2), "wall": round(time.monotonic() - t0, 1)}
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


# --- the fault matrix table (scripts/fault-matrix sets RK_FAULT_TABLE) ----------------------
FAULT_CELLS: dict[tuple[str, str], dict] = {}


def pytest_runtest_logreport(report):
    if "test_agent_cycles.py::test_cycle[" in report.nodeid and (report.when == "call" or report.outcome != "passed"):
        AGENT_OUTCOMES[report.outcome] += 1
    if "test_faults.py::test_F" not in report.nodeid:
        return
    name, _, params = report.nodeid.split("::")[1].partition("[")
    fault = name.split("_")[1]
    provider = next(p for p in params.rstrip("]").split("-") if p in ("local", "gce", "ec2"))
    cell = FAULT_CELLS.setdefault((fault, provider), {"ok": True, "seconds": 0.0, "tests": set()})
    cell["ok"] = cell["ok"] and not report.failed
    cell["seconds"] += report.duration
    cell["tests"].add(report.nodeid)


def pytest_sessionfinish(session):
    from fake_vm import FakeVMs

    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:  # a pytest-xdist worker: what it counted goes to the controller's summary
        worker_output.update(fake_vms=dict(FakeVMs.booted), cycles=CYCLES, vm_isolation=dict(VM_ISOLATION))
        return
    path = os.environ.get("RK_FAULT_TABLE")
    if not path or not FAULT_CELLS:
        return
    import platform
    import time

    from test_faults import FAULTS, PROVIDERS

    lines = ["# Fault matrix", "",
             "Generated from tests/py/test_faults.py by `scripts/fault-matrix` (or any pytest run with "
             "RK_FAULT_TABLE set; CI runs the module with the rest of the suite) on "
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python {platform.python_version()}. "
             "Each cell: the run's own checks plus no instance left after a reaper pass, log and status.json "
             "in the bucket, the true exit code and cause, nothing written outside the output directory, and "
             "no credential in any rendered script or instance metadata. Seconds are the cell's wall time (under scripts/test's parallel workers, shared with the rest of the suite).", "",
             "| fault | " + " | ".join(PROVIDERS) + " |", "|---|" + "---|" * len(PROVIDERS)]
    for fault, what in FAULTS.items():
        cells = []
        for provider in PROVIDERS:
            c = FAULT_CELLS.get((fault, provider))
            cells.append("not run" if c is None else
                         f"{'pass' if c['ok'] else '**FAIL**'} {c['seconds']:.1f} s" +
                         (f" ({len(c['tests'])} runs)" if len(c["tests"]) > 1 else ""))
        lines.append(f"| **{fault}** {what} | " + " | ".join(cells) + " |")
    failed = sum(not c["ok"] for c in FAULT_CELLS.values())
    lines += ["", f"{len(FAULT_CELLS) - failed} of {len(FAULT_CELLS)} cells pass.", ""]
    Path(path).write_text("\n".join(lines))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """A pytest-xdist worker is done: add its fake VMs and agent cycles to the summary (the
    test reports themselves, and so the outcome counts and fault cells, reach the controller)."""
    from fake_vm import FakeVMs

    out = getattr(node, "workeroutput", None) or {}
    for kind, n in out.get("fake_vms", {}).items():
        FakeVMs.booted[kind] += n
    CYCLES.extend(out.get("cycles", []))
    for key, why in out.get("vm_isolation", {}).items():
        VM_ISOLATION[key] = VM_ISOLATION[key] or why


def pytest_terminal_summary(terminalreporter):
    from fake_vm import FakeVMs

    if any(AGENT_OUTCOMES.values()):
        o = AGENT_OUTCOMES
        terminalreporter.write_line(f"real agent CLI cycles: {o['passed']} passed, {o['failed']} failed, "
                                    f"{o['skipped']} skipped")
        for c in CYCLES:
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in c["seconds"].items())
            terminalreporter.write_line(f"  {c['agent']} {c['version']} on {c['target']} → {c['verdict']}: {phases}")

    booted = FakeVMs.booted
    if booted["netns"] or booted["process"]:
        why = f" (network namespaces unavailable: {VM_ISOLATION['reason']})" if VM_ISOLATION["reason"] else ""
        bare = f"; bare images unavailable: {VM_ISOLATION['bare']}" if VM_ISOLATION["bare"] and booted["netns"] else ""
        terminalreporter.write_line(f"fake VMs: {booted['netns']} booted in their own network namespace "
                                    f"({booted['bare']} from a bare image), {booted['process']} as plain "
                                    f"processes{why}{bare}")


@pytest.fixture(params=["local", "gcs", "s3", "gcs-vm", "s3-vm"])
def store(request, tmp_path, monkeypatch):
    """The same Store contract, on each backend against its emulator: the client's stores (the
    user's credentials) and the VM's (credentials from a metadata server)."""
    from researchkit_py.clouds.registry import open_store

    if request.param == "local":
        return open_store(f"file://{tmp_path / 'bucket'}")
    if request.param == "gcs":
        return open_store(f"gs://{request.getfixturevalue('gcs_bucket')}/pre/fix")
    if request.param == "s3":
        return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/pre/fix")
    return vm_store(request, monkeypatch, request.param.removesuffix("-vm"))


def vm_store(request, monkeypatch, scheme: str):
    """A VM's store for a fresh bucket, its credentials from a metadata server of its own."""
    from fake_vm import MetadataServer

    from researchkit_py.settings import Settings

    flavor = "gce" if scheme == "gcs" else "aws"
    meta = MetadataServer({"flavor": flavor, "name": "vm", "zone": "us-central1-a", "project": "p", "instance_id": "i-1"})
    request.addfinalizer(meta.stop)
    if flavor == "gce":
        from researchkit_py.clouds.gce.rest import GCSRestStore

        monkeypatch.setenv("RK_METADATA_URL", meta.url)
        return GCSRestStore.open_url(f"gs://{request.getfixturevalue('gcs_bucket')}/pre/fix", Settings(read_file=False))
    from researchkit_py.clouds.ec2.rest import S3RestStore

    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", meta.base + "/")
    return S3RestStore.open_url(f"s3://{request.getfixturevalue('s3_bucket')}/pre/fix", Settings(read_file=False))
