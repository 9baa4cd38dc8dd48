"""The fault matrix: each fault on each provider — the embedded `local` provider, GCE (fake
Compute API, fake-gcs-server, fake VMs) and EC2 (moto, fake VMs).

Every cell checks what users rely on: no instance is left once the run is over and a reaper
pass has run; the log and status.json are in the bucket; the exit code and cause are the
true ones; nothing is written outside the output directory; no credential is in any
rendered script or instance metadata. `scripts/fault-matrix` runs this module and writes
docs/fault-matrix.md from its results (see conftest.fault_report).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from emulators import FAKE_SECRET
from fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
PROVIDERS = ["local", "gce", "ec2"]
FAKE_KEY_FILE_TEXT = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----FAKEFAKE"}'
SECRETS = (FAKE_SECRET, "AKIAIOSFODNN7EXAMPLE", "FAKEFAKE", "service-account-key.json")

FAULTS = {
    "F1": "the command exits non-zero",
    "F2": "a requirement fails to install (named in the cause; bare image)",
    "F3a": "the command hangs past max-hours: the script's deadline ends it",
    "F3b": "… with the trap and the script's deadline disabled: the cloud deadline alone",
    "F3c": "… with the cloud deadline disabled too: the reaper alone",
    "F3d": "one teardown layer alone: the VM's trap (cloud deadline, reaper and attached confirmation disabled)",
    "F3e": "one teardown layer alone: the attached client's confirmation (self-delete, cloud deadline, reaper disabled)",
    "F4": "the VM is killed hard mid-run (preemption)",
    "F5a": "SIGINT / SIGTERM to the CLI between manifest and instance creation: CANCELLED, nothing left",
    "F5b": "SIGINT / SIGTERM / SIGHUP to an attached CLI right after the instance exists: the run stops",
    "F5c": "SIGINT to an attached CLI 0.2 s, 1 s, 3 s after its start: the run stops (or never began)",
    "F5d": "SIGINT during the launch, the instance not listed yet (only the fake Compute API lags): its VM finds "
           "the stop request at boot, never runs the command, says CANCELLED and goes",
    "F5e": "the same SIGINT again 0.1 s later (a process group signalled by experiment.sh, then by its `timeout`): "
           "one stop, the VM's own CANCELLED; a second Ctrl-C 1.5 s later, the command ignoring TERM: deleted at once",
    "F6a": "the bucket refuses uploads for 2 s during the results upload",
    "F6b": "the bucket refuses the results upload for good",
    "F7": "keys with `..`, absolute paths, symlinks on pull and hydrate",
    "F8": "quotes, $(), backticks, spaces, newlines in command, env, spec name, paths",
    "F9": "20 runs launched concurrently (20 CLI processes), the same spec twice",
    "F10": "bad input: one-line error, non-zero exit, nothing created",
    "F11": "the VM's installer cannot be installed (no SDK is, any more: uv, for requirements.txt; bare image)",
    "F12": "apt's lock held 60 s at boot, on an image without python3: apt waits, then succeeds",
    "F13": "no route to the package index (bare image)",
}


@dataclass
class Cloud:
    """One provider, as the fault tests drive it."""

    name: str
    tmp: Path
    live: Callable[[], list[str]]  # instances of this tool still running (or stopped)
    scripts: Callable[[], list[str]]  # everything the provider was given to boot a VM with
    kill: Callable[[str], None]  # the VM dies at once, no trap runs, the instance goes away
    vms: object = None
    fake: object = None
    proxies: list[FaultProxy] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", self.name, *args], capture_output=True,
                              text=True, env=env or os.environ.copy(), timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        """The CLI in the background, to be interrupted. Not measured by coverage: the .pth that
        starts coverage in every process swallows a KeyboardInterrupt raised while it imports
        coverage (a bare `except: pass`), so an interrupt 0.2 s in was lost under CI only."""
        env = {k: v for k, v in os.environ.items() if k not in ("COVERAGE_PROCESS_START", "COVERAGE_RESEARCHKIT_HOOK")}
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT: every thread's stack on stderr (stopped())
        return subprocess.Popen([str(REPO / "tools" / "cloud-run"), "--backend", self.name, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def context(self):
        """The provider and bucket as the CLI opens them, in-process (no Python start)."""
        from researchkit_py.lifecycle import Context
        from researchkit_py.settings import Settings

        return Context.open(Settings(), self.name)

    def store(self):
        return self.context().store

    def disable_cloud_deadline(self, run_id: str) -> None:
        """What the cloud enforces stops working: maxRunDuration (GCE), the scheduled shutdown
        (EC2), the supervisor that powers a local VM off at its deadline (killed)."""
        if self.name == "gce":
            self.fake.enforce_deadlines = False
        elif self.name == "ec2":
            self.vms.enforce_deadlines = False
        else:
            rec = json.loads((self.tmp / "state" / "local" / "instances" / f"rk-{run_id}.json").read_text())
            os.kill(rec["supervisor_pid"], signal.SIGKILL)

    def proxied_bucket(self) -> FaultProxy:
        """Put a fault-injecting proxy between the bucket and everyone (CLI and VMs). The local
        provider's directory bucket cannot refuse requests: it gets a GCS bucket for this."""
        mp = pytest.MonkeyPatch()
        if self.name == "ec2":
            proxy = FaultProxy(os.environ["AWS_ENDPOINT_URL"], host=_host(os.environ["AWS_ENDPOINT_URL"]))
            mp.setenv("AWS_ENDPOINT_URL", proxy.url)
            self.vms.api_env["AWS_ENDPOINT_URL"] = proxy.url
        else:
            if self.name == "local":
                from researchkit_py.clouds.gce.store import gcs_client

                bucket = f"b-{uuid.uuid4().hex[:12]}"
                gcs_client().create_bucket(bucket)
                mp.setenv("RK_BUCKET", f"gs://{bucket}/rk")
            proxy = FaultProxy(os.environ["STORAGE_EMULATOR_HOST"], host=_host(os.environ["STORAGE_EMULATOR_HOST"]))
            mp.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            if self.vms is not None:
                self.vms.api_env["STORAGE_EMULATOR_HOST"] = proxy.url
        self.proxies.append(proxy)
        self._undo = mp
        return proxy

    def close(self) -> None:
        if hasattr(self, "_undo"):
            self._undo.undo()
        for p in self.proxies:
            p.stop()


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or "127.0.0.1"


@pytest.fixture(params=PROVIDERS)
def cloud(request, project, tmp_path, monkeypatch, gcs_bucket):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    key = tmp_path / "service-account-key.json"
    key.write_text(FAKE_KEY_FILE_TEXT)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    if request.param == "local":
        c = _local(tmp_path, monkeypatch)
    elif request.param == "gce":
        fake = request.getfixturevalue("gce")
        c = Cloud("gce", tmp_path, live=fake.names, kill=fake.vms.preempt, vms=fake.vms, fake=fake,
                  scripts=lambda: [json.dumps(e["body"]) for e in fake.inserts()])
    else:
        vms = request.getfixturevalue("ec2")
        vms.minute_seconds = 6  # `shutdown -h +N` fires after N × 6 s: the 6 s deadline of F3b

        def kill(name: str) -> None:  # a spot interruption: the VM dies, EC2 terminates the instance
            vms.kill(name)
            vms.ec2.terminate_instances(InstanceIds=[vms.ids[name]])

        def live() -> list[str]:
            pages = vms.ec2.describe_instances(Filters=[
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
            return [i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"]]

        c = Cloud("ec2", tmp_path, live=live, kill=kill, vms=vms,
                  scripts=lambda: [v["identity"]["user_data"] for v in vms.vms.values()])
    yield c
    c.close()


def _local(tmp_path: Path, monkeypatch) -> Cloud:
    from researchkit_py.clouds.local.processes import session_pids

    monkeypatch.setenv("RK_KEEP_VM_DIR", "1")  # the startup scripts stay for no_secrets()
    state = tmp_path / "state" / "local"

    def live() -> list[str]:
        return sorted(p.stem for p in (state / "instances").glob("*.json"))

    def kill(name: str) -> None:
        rec = json.loads((state / "instances" / f"{name}.json").read_text())
        for pid in session_pids(rec["session"]):
            os.kill(pid, signal.SIGKILL)

    return Cloud("local", tmp_path, live=live, kill=kill,
                 scripts=lambda: [p.read_text() for p in (state / "vms").glob("*/startup.sh")])


# --- what every cell checks ------------------------------------------------------------
def settle(cloud: Cloud, timeout: float = 60) -> None:
    """The run is over: after a reaper pass, no instance of this tool is left. A deletion takes a
    while: between passes only the cheap list of instances is polled (a pass is a Python start,
    0.7 s of CPU, and this machine's CPU is what the whole suite waits on)."""
    end = time.time() + timeout
    while True:
        r = cloud.cli("reap")
        assert r.returncode == 0, r.stderr
        next_pass = time.time() + CLI_EVERY
        while cloud.live() and time.time() < next_pass:
            time.sleep(0.3)
        if not cloud.live():
            return
        if time.time() > end:
            raise AssertionError(f"{cloud.name}: instances left: {cloud.live()}")


def record(cloud: Cloud, run_id: str, *, log: bool = True) -> tuple[dict, str]:
    """The run's status.json and log from the bucket (both must be there): the log as `cloud-run
    logs` reads it (on S3, a short log of a VM that died is still in chunks)."""
    from researchkit_py.lifecycle import has_log, read_log

    ctx = cloud.context()
    status = ctx.store.read_json(f"runs/{run_id}/status.json")
    if not log:
        return status, ""
    assert has_log(ctx, run_id), f"{cloud.name}: no log of {run_id}"
    return status, read_log(ctx, run_id).decode()


def state(cloud: Cloud, run_id: str) -> dict:
    r = cloud.cli("status", run_id, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def no_secrets(cloud: Cloud) -> None:
    scripts = cloud.scripts()
    for text in scripts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} reached a VM's script or metadata"


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def out_dir(cloud: Cloud) -> Path:
    """An output directory alone in a fresh parent: anything else that appears there escaped it."""
    parent = cloud.tmp / "work"
    parent.mkdir(exist_ok=True)
    return parent / "out dir"


def contained(cloud: Cloud) -> None:
    assert [p.name for p in (cloud.tmp / "work").iterdir()] in ([], ["out dir"])


CLI_EVERY = 3.0  # seconds between CLI calls of a wait; in between, the state is read in-process


def wait_phase(cloud: Cloud, run_id: str, phases: tuple[str, ...], timeout: float = 60) -> dict:
    """What `cloud-run status` says once the run is in one of `phases`. The CLI is asked every
    CLI_EVERY seconds (each call may run a reaper pass, as a user's would) and at the end; in
    between, the same state is read in-process, which costs no Python start."""
    from researchkit_py import lifecycle

    ctx, end, next_cli = cloud.context(), time.time() + timeout, 0.0
    while time.time() < end:
        if time.time() >= next_cli:
            s, next_cli = state(cloud, run_id), time.time() + CLI_EVERY
            if s.get("phase") in phases:
                return s
        elif lifecycle.run_state(ctx, run_id).get("phase") in phases:
            next_cli = 0.0  # the CLI confirms it
            continue
        time.sleep(0.3)
    raise AssertionError(f"{run_id} never reached {phases}: {state(cloud, run_id)}")


def launch_with(cloud: Cloud, monkeypatch, command: str, max_hours: float, mutate: Callable[[str], str]) -> str:
    """Launch in-process with the startup script altered on its way to the provider."""
    from researchkit_py import lifecycle

    ctx = altered_context(cloud, monkeypatch, mutate)
    return lifecycle.launch(ctx, lifecycle.LaunchOptions(command=command, max_hours=max_hours, detached=True)).run_id


def altered_context(cloud: Cloud, monkeypatch, mutate: Callable[[str], str]):
    """A lifecycle Context whose provider gets every startup script through `mutate`."""
    ctx = cloud.context()
    real = ctx.provider.create

    def create(req):
        req.startup_script = mutate(req.startup_script)
        return real(req)

    monkeypatch.setattr(ctx.provider, "create", create)
    return ctx


def no_trap(script: str) -> str:
    for old, new in (("trap rk_finish EXIT\n", ": no EXIT trap\n"),
                     ('timeout --kill-after=30 "$RK_SOFT_DEADLINE"', "timeout 100000")):
        assert old in script, f"the startup script no longer has {old!r}; update this fault"
        script = script.replace(old, new)
    return script


# --- F1 … F10 ----------------------------------------------------------------------------
def test_F1_command_exits_non_zero(cloud):
    out = out_dir(cloud)
    r = cloud.cli("run", 'mkdir -p "$RESULTS_DIR"; echo partial > "$RESULTS_DIR/p.txt"; echo failing; exit 3',
                  "--output-dir", str(out))
    assert r.returncode == 3, r.stderr
    run_id = r.stdout.strip()
    status, log = record(cloud, run_id)
    assert (status["phase"], status["cause"], status["exit_code"]) == ("FAILED", "exit", 3)
    assert "failing" in log and "researchkit: FAILED" in log
    assert (out / "p.txt").read_text() == "partial\n"  # what it wrote is still brought back
    settle(cloud)
    contained(cloud)
    no_secrets(cloud)


def setup_fails(cloud: Cloud, step: str, *, requirements: str = "tabulate\n") -> str:
    """A run whose setup fails: the status (FAILED, boot_error, SETUP, the step that failed and
    why) and the log are in the bucket, the client says it — FAILED (boot_error: <step>) —, the
    command never ran, and the VM is gone. Returns the step. (How soon: test_bare_startup's
    retry-policy test; a wall-clock bound here failed on a loaded machine.)"""
    (Path.cwd() / "requirements.txt").write_text(requirements)
    r = cloud.cli("run", "echo should-not-run", "--output-dir", str(out_dir(cloud)))
    assert r.returncode == 125, r.stderr  # the command never ran to its end
    status, log = record(cloud, r.stdout.strip())
    assert (status["phase"], status["cause"], status["stage"]) == ("FAILED", "boot_error", "SETUP"), status
    assert status["step"].startswith(step), status["step"]
    assert status["step"] in log and f"FAILED (boot_error: {status['step']})" in r.stderr
    assert "should-not-run" not in log.replace("running: echo", "")
    settle(cloud)
    contained(cloud)
    no_secrets(cloud)
    return status["step"]


@pytest.mark.vm_image("bare")
def test_F2_a_requirement_fails_to_install(cloud):
    setup_fails(cloud, "installing requirements.txt: researchkit-no-such-package==0.0.1 cannot be installed: ",
                requirements="--no-index\ntabulate\nresearchkit-no-such-package==0.0.1\n")


def test_F3a_hang_ends_at_the_deadline(cloud, monkeypatch):
    # in-process: the CLI refuses deadlines under 30 s (GCE's minimum), this cell wants 11 s. The
    # cloud's own deadline is off: at 6 s of boot it raced the script's (F3b tests it alone).
    from researchkit_py import protocol

    if cloud.name != "local":
        cloud.disable_cloud_deadline("")
    run_id = launch_with(cloud, monkeypatch, "echo hanging; sleep 600", 0.003, lambda script: script)
    reached(cloud, run_id, ("FAILED", "DONE"))  # no reaper: the script's deadline alone
    s = state(cloud, run_id)
    assert protocol.client_exit_code(s) == 124  # what `cloud-run run` exits with
    status, log = record(cloud, run_id)
    assert (status["phase"], status["cause"]) == ("FAILED", "timeout") and "hanging" in log
    settle(cloud)
    no_secrets(cloud)


def test_F3b_hang_with_no_trap_the_cloud_deadline_alone(cloud, monkeypatch):
    run_id = launch_with(cloud, monkeypatch, "echo hanging; sleep 600", 0.0015, no_trap)  # 6 s
    reached(cloud, run_id, ("RUN",))  # no reaper: the cloud's deadline alone
    end = time.time() + 60
    while cloud.live() and time.time() < end:  # no reaper here: only what the cloud enforces
        time.sleep(0.3)
    assert not cloud.live(), f"the deadline did not remove {cloud.live()}"
    s = wait_phase(cloud, run_id, ("FAILED",), timeout=30)
    assert s["cause"] == "timeout"
    status, log = record(cloud, run_id)
    assert status["phase"] == "RUN" and "hanging" in log  # what the VM last said, and its log
    settle(cloud)
    no_secrets(cloud)


def test_F3c_hang_with_no_trap_no_deadline_the_reaper_alone(cloud, monkeypatch):
    if cloud.name != "local":
        cloud.disable_cloud_deadline("")
    run_id = launch_with(cloud, monkeypatch, "echo hanging; sleep 600", 0.0015, no_trap)  # 6 s
    # Without the CLI, which reaps on every call: a VM slow to boot would be reaped before RUN.
    reached(cloud, run_id, ("RUN",))
    if cloud.name == "local":  # its supervisor starts the VM: it can only be stopped after
        cloud.disable_cloud_deadline(run_id)
    from researchkit_py import lifecycle, protocol

    manifest = lifecycle.read_manifest(cloud.context(), run_id)
    time.sleep(max(0.0, protocol.parse_iso(manifest["expires_at"]) - time.time()) + 1)
    assert cloud.live(), "something other than the reaper ended it"
    r = cloud.cli("reap")
    assert r.returncode == 0 and "deleted" in r.stdout, r.stderr
    settle(cloud)
    s = wait_phase(cloud, run_id, ("FAILED",), timeout=30)
    assert s["cause"] == "timeout"
    _, log = record(cloud, run_id)
    assert "hanging" in log
    no_secrets(cloud)


def no_self_delete(script: str) -> str:
    """The trap still reports the final status, but its self-delete does nothing."""
    start = script.index("rk_self_delete() {\n")
    end = script.index("\n}\n", start)
    assert "rk_self_delete" in script[end:], "the trap no longer calls rk_self_delete; update this fault"
    return script[:start] + "rk_self_delete() {\n  :" + script[end:]


def reached(cloud: Cloud, run_id: str, phases: tuple[str, ...], timeout: float = 60) -> None:
    """wait_phase without the CLI: every `cloud-run` invocation may run a reaper pass, and these
    cells must have no reaper."""
    from researchkit_py import lifecycle

    ctx, end = cloud.context(), time.time() + timeout
    while (s := lifecycle.run_state(ctx, run_id)).get("phase") not in phases:
        assert time.time() < end, f"{run_id} never reached {phases}: {s}"
        time.sleep(0.3)


def gone_without_help(cloud: Cloud, timeout: float = 60) -> None:
    """No reaper, no client: the instance goes away by what is left, or the cell fails."""
    end = time.time() + timeout
    while cloud.live() and time.time() < end:
        time.sleep(0.3)
    assert not cloud.live(), f"{cloud.name}: nothing removed {cloud.live()}"


def test_F3d_the_vms_trap_alone(cloud, monkeypatch):
    """Detached (no client confirms), the cloud's deadline off, no reaper pass until the end:
    the VM's EXIT trap reports and deletes the VM. The provider's self-delete lines, as
    rendered, are all that removes it."""
    if cloud.name != "local":
        cloud.disable_cloud_deadline("")
    run_id = launch_with(cloud, monkeypatch, "echo working; sleep 5; exit 3", 1, lambda script: script)
    reached(cloud, run_id, ("RUN",))
    if cloud.name == "local":
        cloud.disable_cloud_deadline(run_id)  # the supervisor, which also tidies a finished VM
    gone_without_help(cloud)
    status, log = record(cloud, run_id)
    assert (status["phase"], status["cause"], status["exit_code"]) == ("FAILED", "exit", 3) and "working" in log
    settle(cloud)
    no_secrets(cloud)


def test_F3e_the_attached_confirmation_alone(cloud, monkeypatch):
    """The trap reports the final status but its self-delete does nothing, the cloud's deadline
    is off and no reaper runs: the attached `cloud-run run`, having seen the final status,
    waits RK_SELF_DELETE_WAIT for the VM to go, then deletes it (at once if it stopped, as a
    local VM does when its script ends)."""
    import argparse

    from researchkit_py import lifecycle
    from researchkit_py.cloudrun_run import _after_launch

    monkeypatch.setenv("RK_SELF_DELETE_WAIT", "3")
    if cloud.name != "local":
        cloud.disable_cloud_deadline("")
    ctx = altered_context(cloud, monkeypatch, no_self_delete)
    plan = lifecycle.launch(ctx, lifecycle.LaunchOptions(command="echo working; sleep 5", max_hours=1))
    reached(cloud, plan.run_id, ("RUN",))
    if cloud.name == "local":
        cloud.disable_cloud_deadline(plan.run_id)
    args = argparse.Namespace(detach=False, json=False, quiet=True)
    assert _after_launch(ctx, args, plan, None) == 0  # what `cloud-run run` does once it launched
    assert not cloud.live(), f"{cloud.name}: the attached client left {cloud.live()}"  # only it was left to
    status, _ = record(cloud, plan.run_id)
    assert status["phase"] == "DONE"
    settle(cloud)
    no_secrets(cloud)


def test_F4_vm_killed_hard_mid_run(cloud):
    r = cloud.cli("run", "echo working; sleep 600", "--detach")
    run_id = r.stdout.strip()
    wait_phase(cloud, run_id, ("RUN",))
    cloud.kill(f"rk-{run_id}")
    s = wait_phase(cloud, run_id, ("FAILED",), timeout=30)
    assert s["cause"] == "lost"
    settle(cloud)
    status, log = record(cloud, run_id)
    assert status["phase"] == "RUN" and "working" in log
    no_secrets(cloud)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_F5a_interrupted_between_manifest_and_instance(cloud, sig):
    proxy = cloud.proxied_bucket()
    seen = proxy.hold(lambda r: r.names("/manifest.json") and r.method in ("PUT", "POST"), 4)
    p = cloud.popen("run", "echo should-not-run", "--output-dir", str(out_dir(cloud)))
    assert seen.wait(60), f"the manifest was never written: {p.kill() or p.communicate()}"
    p.send_signal(sig)
    run_id, err = stopped(cloud, p, sig, out_dir(cloud))
    assert run_id and "interrupted" in err and "while launching" in err, err
    status = cloud.store().read_json(f"runs/{run_id}/status.json")
    assert status["message"].startswith("launch interrupted"), status  # cancelled, not a boot_error


@pytest.mark.parametrize("cloud", ["gce"], indirect=True)  # the fake whose listing can lag its inserts
def test_F5d_interrupted_launch_whose_instance_was_not_listed_yet(cloud):
    """The client, interrupted while the instance was being made, cannot find it to delete it (a
    list that lags behind an insert, as EC2's describe calls can): it records CANCELLED and asks
    the run to stop. The VM boots anyway, finds the request with its first report, never runs
    the command, says CANCELLED itself and deletes itself."""
    from researchkit_py.protocol import instance_name

    fake = cloud.fake
    fake.unlisted, fake.hold_inserts = True, threading.Event()
    try:
        p = cloud.popen("run", "echo should-not-run", "--output-dir", str(out_dir(cloud)))
        assert fake.inserted.wait(60), f"no insert came: {p.kill() or p.communicate()}"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        fake.hold_inserts.set()
    assert p.returncode == 130 and "while launching" in err and "Traceback" not in err, (p.returncode, err)
    fake.unlisted = False
    cloud.vms.wait_all_gone(timeout=120)  # the VM went on its own
    (run_id,) = cloud.store().list_dirs("runs")
    status, log = record(cloud, run_id)
    assert (status["phase"], status["cause"], bool(status.get("host"))) == ("CANCELLED", "cancelled", True), status
    assert "researchkit: CANCELLED (cancelled during BOOT" in log and "running:" not in log, log
    assert [e["method"] for e in fake.log if e["path"].endswith(f"/instances/{instance_name(run_id)}")] == ["DELETE"]  # its own


PARTIAL = 'mkdir -p "$RESULTS_DIR"; echo partial > "$RESULTS_DIR/p.txt"; echo "made-$((6 * 7))"; sleep 600'


def stopped(cloud: Cloud, p: subprocess.Popen, sig: int, out: Path) -> tuple[str | None, str]:
    """An attached run interrupted by `sig`: the CLI exits 128 + sig with no traceback; if the
    run was recorded, its id was printed at once and left in .cloud-run-id, its final status
    is CANCELLED; no instance is left. (run id or None, the CLI's stderr)."""
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # the signal did not stop it: where it is, then nothing of it may outlive the test
        try:  # whether the signal was ignored, blocked or still pending (bit N-1 is signal N)
            masks = " ".join(line.replace("\t", " ").strip() for line in Path(f"/proc/{p.pid}/status").read_text().splitlines()
                             if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
        except OSError:
            masks = "gone"
        p.send_signal(signal.SIGABRT)
        try:
            _, err = p.communicate(timeout=30)
        finally:
            p.kill()
        raise AssertionError(f"still running 120 s after {signal.Signals(sig).name} ({masks}); its stderr, then its "
                             f"stacks:\n{err}") from None
    runs = cloud.store().list_dirs("runs")
    if not runs:  # before the run was recorded; before Python's own handler exists, killed by it
        assert not cloud.live() and "Traceback" not in err and "Fatal" not in err, err
        assert (p.returncode, "interrupted" in err) in ((128 + sig, True), (-sig, False)), (p.returncode, err)
        return None, err
    assert p.returncode == 128 + sig and "Traceback" not in err, (p.returncode, err)
    (run_id,) = runs
    assert f"cloud-run: run {run_id}" in err and (out / ".cloud-run-id").read_text() == run_id + "\n", err
    status = cloud.store().read_json(f"runs/{run_id}/status.json")
    assert (status["phase"], status["cause"]) == ("CANCELLED", "cancelled"), status
    assert not cloud.live(), "the client left an instance after it stopped"  # before any reaper pass
    settle(cloud)
    assert state(cloud, run_id)["phase"] == "CANCELLED"
    contained(cloud)
    return run_id, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_F5b_interrupted_right_after_the_instance(cloud, monkeypatch, sig):
    """Attached means attached: the VM is asked to stop, uploads its log and what the command
    made, writes CANCELLED and goes; the client pulls what was kept."""
    monkeypatch.setenv("RK_CANCEL_WAIT", "30")
    out = out_dir(cloud)
    p = cloud.popen("run", PARTIAL, "--output-dir", str(out))
    assert p.stdout.readline().strip(), "no run id"  # printed once the instance exists
    p.send_signal(sig)
    run_id, err = stopped(cloud, p, sig, out)
    assert run_id and f"{run_id} CANCELLED" in err and "kept: the log" in err, err
    status, log = record(cloud, run_id)  # the VM itself stopped, and said so
    assert status.get("host") and "researchkit: CANCELLED (cancelled during" in log, (status, log)
    if "made-42" in log:  # the command ran: what it made is kept and pulled
        assert (out / "p.txt").read_text() == "partial\n", err


@pytest.mark.parametrize("at", [0.2, 1.0, 3.0], ids=["0.2s", "1s", "3s"])
def test_F5c_interrupted_while_attached(cloud, monkeypatch, at):
    monkeypatch.setenv("RK_CANCEL_WAIT", "30")
    out = out_dir(cloud)
    p = cloud.popen("run", PARTIAL, "--output-dir", str(out))
    time.sleep(at)
    p.send_signal(signal.SIGINT)
    run_id, err = stopped(cloud, p, signal.SIGINT, out)
    print(f"F5c {cloud.name} {at:g} s: " + (f"{run_id} {state(cloud, run_id).get('message')}" if run_id  # which case
                                             else f"before the run was recorded, exit {p.returncode}"))


@pytest.mark.parametrize("second", ["at-once", "later"])
def test_F5e_interrupted_twice(cloud, monkeypatch, second):
    """A signal repeated at once is one interrupt: the stop runs to its end (before, the repeat
    could raise in the middle of it and leave the instance running, its status RUN). A second
    Ctrl-C a moment later, while the VM cannot stop (its command ignores TERM), deletes the
    instance at once instead of waiting RK_CANCEL_WAIT out."""
    monkeypatch.setenv("RK_CANCEL_WAIT", "60")
    out = out_dir(cloud)
    command = PARTIAL if second == "at-once" else f"trap '' TERM; {PARTIAL}"
    p = cloud.popen("run", command, "--output-dir", str(out))
    run_id = p.stdout.readline().strip()
    assert run_id, "no run id"
    if second == "later":  # the command runs, TERM ignored, before the first Ctrl-C
        from researchkit_py.lifecycle import has_log, read_log

        ctx, end = cloud.context(), time.time() + 60
        while not (has_log(ctx, run_id) and b"made-42" in read_log(ctx, run_id)) and time.time() < end:
            time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    if second == "at-once":  # the repeat a moment later, once the first is being handled
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
    else:  # once the request to stop is written: the VM is asked, and cannot comply
        store, end = cloud.store(), time.time() + 30
        while store.read_json_or_none(f"runs/{run_id}/cancel.json") is None and time.time() < end:
            time.sleep(0.2)
        time.sleep(1.5)
        p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    got, err = stopped(cloud, p, signal.SIGINT, out)
    assert got == run_id and f"{run_id} CANCELLED" in err, err
    status, log = record(cloud, run_id)
    if second == "at-once":  # the VM itself stopped, and said so
        assert "interrupted again" not in err and status.get("host"), (status, err)
        assert "researchkit: CANCELLED (cancelled during" in log, log
    else:
        assert "interrupted again; deleting" in err and time.monotonic() - t0 < 45, err


def bucket_write(r) -> bool:
    """An object upload (S3 PUT, GCS POST); not an EC2 API call, which moto also takes (POST /)."""
    return r.method in ("PUT", "POST") and r.path.split("?")[0] != "/"


MANY_RESULTS = 'mkdir -p "$RESULTS_DIR/m"; for i in $(seq 1 30); do echo "$i" > "$RESULTS_DIR/m/f$i.txt"; done'


def test_F6a_bucket_refuses_requests_for_a_while(cloud, monkeypatch):
    monkeypatch.setenv("RK_STORAGE_BACKOFF", "0.5")  # the default: the local VM inherits it
    proxy = cloud.proxied_bucket()
    proxy.refuse(lambda r: r.names("/results/"), seconds=2, scope=bucket_write)
    out = out_dir(cloud)
    r = cloud.cli("run", MANY_RESULTS, "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert proxy.refused > 0, "the fault never happened"
    status, _ = record(cloud, r.stdout.strip())
    assert status["phase"] == "DONE"
    assert sorted(p.name for p in (out / "m").iterdir()) == sorted(f"f{i}.txt" for i in range(1, 31))
    assert all((out / "m" / f"f{i}.txt").read_text() == f"{i}\n" for i in range(1, 31))
    settle(cloud)
    contained(cloud)


def test_F6b_bucket_refuses_the_results_for_good(cloud, monkeypatch):
    proxy = cloud.proxied_bucket()
    proxy.refuse(lambda r: r.names("/results/") and r.method in ("PUT", "POST"), seconds=3600)
    if cloud.vms is not None:
        cloud.vms.api_env.update(RK_STORAGE_RETRIES="2", RK_STORAGE_BACKOFF="0.1")  # the image's settings
    out = out_dir(cloud)
    r = cloud.cli("run", MANY_RESULTS, "--output-dir", str(out))
    assert r.returncode == 125, r.stderr
    run_id = r.stdout.strip()
    status, log = record(cloud, run_id)
    assert (status["phase"], status["cause"]) == ("FAILED", "upload_error") and "503" in log
    assert not cloud.store().exists(f"runs/{run_id}/results.manifest.json")  # nothing partial is complete
    again = cloud.cli("pull", run_id, "--output-dir", str(out))
    assert again.returncode == 1 and "no results manifest" in again.stderr
    settle(cloud)
    contained(cloud)


def test_F7_hostile_keys_on_pull_and_hydrate(cloud):
    from researchkit_py import protocol

    store = cloud.store()
    run_id = protocol.new_run_id("hostile")
    at = time.time()
    store.write_json(f"runs/{run_id}/manifest.json", protocol.RunManifest(
        run_id=run_id, provider=cloud.name, instance=protocol.instance_name(run_id), command="x", bundle="b",
        created_at=protocol.iso(at), expires_at=protocol.iso(at + 60), max_hours=1, heartbeat_seconds=1).to_dict())
    store.write_json(f"runs/{run_id}/status.json", {"phase": "DONE", "exit_code": 0, "cause": "exit"})
    store.put_bytes(f"runs/{run_id}/results/ok.txt", b"ok")
    out = out_dir(cloud)
    outside = cloud.tmp / "work" / "outside"
    for evil in ("../escape.txt", "/etc/researchkit-escape", "a/../../escape.txt", "link/x.txt"):
        out.mkdir(parents=True, exist_ok=True)
        outside.mkdir(exist_ok=True)
        (out / "link").unlink(missing_ok=True)
        (out / "link").symlink_to(outside)
        store.write_json(f"runs/{run_id}/results.manifest.json", {"files": [
            {"path": "ok.txt", "size": 2, "sha256": "2689367b205c16ce32ed4200942b8b8b1e262dfc70d9bc9fbc77c49699a4f1df"},
            {"path": evil, "size": 2, "sha256": "0" * 64}]})
        r = cloud.cli("pull", run_id, "--output-dir", str(out))
        assert "refusing object key" in one_line(r)
        assert list(outside.iterdir()) == [] and not Path("/etc/researchkit-escape").exists()
        assert not (out / "ok.txt").exists()  # refused before anything was written
    (out / "link").unlink()
    outside.rmdir()
    # hydrate: a hostile artifact manifest
    art = out / "sub"
    art.mkdir()
    (art / ".artifacts.json").write_text(json.dumps({"../../escape.bin": {"sha256": "a" * 64, "size": 1, "key": "k"}}))
    env = {**os.environ, "RK_ARTIFACT_BUCKET": cloud.store().url}
    h = subprocess.run([str(REPO / "tools" / "artifact-store"), "hydrate", str(art)], capture_output=True, text=True,
                       env=env, timeout=60)
    one_line(h)
    contained(cloud)
    assert not (cloud.tmp / "escape.bin").exists()


NASTY = "a'b \"c\" $(touch {pwned}) `touch {pwned}` ${{HOME}} sp  ace\nline2"


def test_F8_shell_syntax_arrives_verbatim(cloud, project):
    pwned = cloud.tmp / "pwned"
    nasty = NASTY.format(pwned=pwned)
    (project / "experiments").mkdir()
    spec = project / "experiments" / "exp-008 it's \"odd\" $(x).md"
    spec.write_text("# odd\n")
    cmd = ('mkdir -p "$RESULTS_DIR"; printf "%s" "$NASTY" > "$RESULTS_DIR/v.txt"; '
           'echo \'it\'"\'"\'s `not` $(run)\' > "$RESULTS_DIR/q.txt"')
    out = out_dir(cloud)
    r = cloud.cli("run", cmd, "--env", f"NASTY={nasty}", "--spec", str(spec.relative_to(project)),
                  "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "v.txt").read_text() == nasty
    assert (out / "q.txt").read_text() == "it's `not` $(run)\n"
    assert not pwned.exists()
    run_id = r.stdout.strip()
    assert run_id.startswith("exp-008-it-s-odd-x-")  # the spec's name, made safe
    record(cloud, run_id)
    settle(cloud)
    contained(cloud)
    no_secrets(cloud)


@pytest.mark.waits(60, local=0)
def test_F9_twenty_concurrent_runs(cloud, project, monkeypatch):
    monkeypatch.setenv("RK_HEARTBEAT_SECONDS", "30")  # twenty VMs beating every second would starve two cores
    (project / "experiments").mkdir()
    (project / "experiments" / "exp-009-same.md").write_text("# same\n")
    cmd = 'mkdir -p "$RESULTS_DIR"; echo "$TAG" > "$RESULTS_DIR/tag.txt"'
    results: dict[int, subprocess.CompletedProcess] = {}

    def launch(i: int) -> None:
        spec = "experiments/exp-009-same.md" if i < 2 else f"experiments/exp-{i:03d}.md"
        results[i] = cloud.cli("run", cmd, "--env", f"TAG={i}", "--spec", spec, "--detach", timeout=300)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr for r in results.values() if r.returncode]
    ids = {i: r.stdout.strip() for i, r in results.items()}
    assert len(set(ids.values())) == 20
    assert ids[0].startswith("exp-009-same-") and ids[1].startswith("exp-009-same-")
    from researchkit_py import lifecycle

    ctx, end = cloud.context(), time.time() + 240
    while True:  # in-process (a CLI call a second was half this cell's CPU), then the CLI's listing
        phases = {row["run_id"]: row["phase"] for row in lifecycle.list_runs(ctx)}
        if all(phases.get(run_id) in ("DONE", "FAILED") for run_id in ids.values()) or time.time() > end:
            break
        time.sleep(1)
    phases = {row["run_id"]: row["phase"] for row in json.loads(cloud.cli("ls", "--json").stdout)}  # one for all twenty
    assert [phases.get(run_id) for run_id in ids.values()] == ["DONE"] * 20, phases

    store = cloud.store()
    for i, run_id in ids.items():  # every run's own result, log and status, in the bucket
        assert store.get_bytes(f"runs/{run_id}/results/tag.txt") == f"{i}\n".encode()
        record(cloud, run_id)
    for i in (0, 1):  # and the two runs of the same spec through pull
        out = out_dir(cloud) / ids[i]
        out.parent.mkdir(parents=True, exist_ok=True)
        assert cloud.cli("pull", ids[i], "--output-dir", str(out)).returncode == 0
        assert (out / "tag.txt").read_text() == f"{i}\n"
    settle(cloud, timeout=120)
    no_secrets(cloud)


def test_F10_bad_input(cloud, project, monkeypatch):
    store = cloud.store()
    before = store.list("")

    def refused(*args: str, env: dict | None = None, tool: str = "cloud-run") -> str:
        if tool == "cloud-run":
            r = cloud.cli(*args, env=env)
        else:
            r = subprocess.run([str(REPO / tool), *args], capture_output=True, text=True, env=env or os.environ.copy(),
                               timeout=120)
        line = one_line(r)
        assert not cloud.live() and store.list("") == before, f"{args} created something"
        return line

    env = {**os.environ, "COMPUTE_TARGET": cloud.name}
    assert "experiments/nope.md" in refused("experiments/nope.md", tool="tools/preflight", env=env)
    (project / "experiments").mkdir()
    (project / "experiments" / "exp-001-bare.md").write_text("# no compute profile here\n")
    assert "compute" in refused("experiments/exp-001-bare.md", tool="tools/preflight", env=env).lower()
    assert "no run" in refused("status", "nosuch-20260101-000000-00000000")
    assert "is not a run id" in refused("pull", "../../etc")
    assert "empty" in refused("run", "  ")
    bad_bucket = {"local": "gs://researchkit-no-such-bucket", "gce": "gs://researchkit-no-such-bucket",
                  "ec2": "s3://researchkit-no-such-bucket"}[cloud.name]
    assert "does not exist" in refused("run", "true", env={**os.environ, "RK_BUCKET": bad_bucket})
    no_creds = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ACCESS", "AWS_SECRET", "STORAGE_EMU",
                                                                         "RK_GCE_API", "GOOGLE_APPLICATION"))}
    no_creds.update(AWS_SHARED_CREDENTIALS_FILE=str(project / "none"), AWS_CONFIG_FILE=str(project / "none"),
                    AWS_EC2_METADATA_DISABLED="true",
                    GOOGLE_APPLICATION_CREDENTIALS=str(project / "absent.json"))
    if cloud.name == "local":
        no_creds["RK_BUCKET"] = bad_bucket
    assert "credentials" in refused("run", "true", env=no_creds).lower()
    if cloud.name == "gce":
        assert "GCE_PROJECT" in refused("run", "true", env={k: v for k, v in os.environ.items() if k != "GCE_PROJECT"})
        r = subprocess.run([sys.executable, "-m", "researchkit_py.detached", "--exp", "42"], capture_output=True,
                           text=True, env=os.environ.copy(), timeout=120)
        assert "experiment 42 has no command" in one_line(r)
    (project / ".orchestration-kit.env").write_text("RK_MAX_HOURS=$(rm -rf ~)\n")
    assert "command substitution" in refused("run", "true")
    (project / ".orchestration-kit.env").unlink()
    (project / ".orchestration-kit.env").mkdir()  # unreadable as a file
    assert "cannot read" in refused("run", "true")
    assert not cloud.scripts() or all(FAKE_SECRET not in s for s in cloud.scripts())


# --- F11 … F13: the setup on a provider's default image (the bare image) ---------------------
@pytest.mark.vm_image("bare")
def test_F11_the_installer_cannot_be_installed(cloud, request, monkeypatch):
    """Cloud VMs fetch uv from the package index, which here has none. The embedded provider's VM
    is this machine, whose uv (the client's) is used as it is: its nearest equivalent is a uv
    that cannot work (its cache directory cannot be written)."""
    if cloud.name == "local":
        monkeypatch.setenv("UV_CACHE_DIR", "/proc/researchkit-no-cache")
        setup_fails(cloud, "installing requirements.txt: uv failed: ")
        return
    server = request.getfixturevalue("bare_images").server
    server.refused.add("/wheels/simple/uv/")
    try:
        setup_fails(cloud, "installing requirements.txt: cannot fetch uv: http://")
    finally:
        server.refused.discard("/wheels/simple/uv/")


@pytest.mark.waits(60, local=0)
@pytest.mark.vm_image("no-python3", dpkg_lock_seconds=60)
def test_F12_apts_lock_held_at_boot(cloud, monkeypatch, tmp_path):
    """On an image without python3 the script installs it with apt, which waits for the lock
    unattended-upgrades holds at a first boot. The embedded provider's VM is this machine (it has
    python3; its apt is not ours to lock): its nearest equivalent is an apt that fails, which the
    run must not need."""
    if cloud.name == "local":
        shims = tmp_path / "apt-shims"
        shims.mkdir()
        for tool in ("apt-get", "apt", "dpkg"):
            (shims / tool).write_text(f"#!/bin/sh\necho called >> {tmp_path}/apt-calls\nexit 100\n")
            (shims / tool).chmod(0o755)
        monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    t0 = time.monotonic()
    r = cloud.cli("run", 'mkdir -p "$RESULTS_DIR"; python3 --version > "$RESULTS_DIR/v.txt"', "--output-dir",
                  str(out_dir(cloud)))
    assert r.returncode == 0, r.stderr
    status, log = record(cloud, r.stdout.strip())
    assert status["phase"] == "DONE" and (out_dir(cloud) / "v.txt").read_text().startswith("Python 3")
    if cloud.name == "local":
        assert not (tmp_path / "apt-calls").exists()
    else:
        assert "installing python3 with apt (the image has none)" in log and time.monotonic() - t0 >= 60
    settle(cloud)
    contained(cloud)
    no_secrets(cloud)


@pytest.mark.vm_image("bare", package_sources=False)
def test_F13_no_route_to_the_package_index(cloud, monkeypatch):
    """Cloud VMs: no route out of their network (nor a resolver), as without an external address
    or a NAT. The embedded provider: an index that refuses connections (UV_INDEX_URL)."""
    if cloud.name == "local":
        monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:9/simple/")
    index = "http://127.0.0.1:9" if cloud.name == "local" else "https://pypi.org"
    setup_fails(cloud, f"installing requirements.txt: cannot reach the package index {index} (")
