"""Every documented setting, written in .orchestration-kit.env (and nowhere else), takes
effect. Each is seen where it acts: the CLIs' output where that is cheap (in-process, through
the same entry point a user runs), else the object the CLI's settings build; the few that
cannot come from the file say why, and how they are covered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_layout import _documented_settings

from researchkit_py.errors import run_cli
from researchkit_py.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SPEC = "experiments/exp-001-toy-logreg.md"


class Project:
    def __init__(self, root: Path, monkeypatch, capsys):
        self.root, self.mp, self.capsys = root, monkeypatch, capsys

    def env_file(self, **values: str) -> None:
        """These settings in the env file, and nowhere in the environment."""
        for name in values:
            self.mp.delenv(name, raising=False)
        (self.root / ".orchestration-kit.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def cli(self, main: Callable[[list[str]], int], *argv: str) -> tuple[int, str, str]:
        """A CLI's entry point, in-process: (exit code, stdout, stderr)."""
        with pytest.raises(SystemExit) as e:
            run_cli("cli", main, list(argv))
        out = self.capsys.readouterr()
        return e.value.code, out.out, out.err

    def begin(self, phase: str = "run") -> dict[str, str]:
        """experiment.sh's `begin` for a phase: the assignments it prints, and the prompt it wrote."""
        from researchkit_py.experiment import cli

        code, out, err = self.cli(cli.main, "begin", phase, "--spec", SPEC)
        assert code == 0, err
        values = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
        values = {k: v.strip("'") for k, v in values.items()}
        values["prompt"] = Path(values["PROMPT_FILE"]).read_text()
        if values.get("LOCK_RECORD"):
            self.cli(cli.main, "unlock", values["LOCK_RECORD"])
        return values

    def dry_run(self, *extra: str) -> tuple[int, str, str]:
        from researchkit_py import cloudrun

        return self.cli(cloudrun.main, "run", "python3 train.py", "--dry-run", *extra)

    def context(self):
        from researchkit_py.lifecycle import Context

        return Context.open(Settings())


@pytest.fixture
def proj(tmp_path, monkeypatch, capsys) -> Project:
    root = tmp_path / "toy"
    shutil.copytree(REPO / "examples" / "toy", root)
    (root / ".orchestration-kit.env").unlink()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("EXP_PROJECT_ROOT", str(root))
    monkeypatch.setenv("EXP_AGENT", "scripted")
    return Project(root, monkeypatch, capsys)


# name -> how its effect is seen; each check writes the env file itself.
OBSERVE: dict[str, Callable[[Project], None]] = {}


def observes(*names: str):
    def register(check: Callable[[Project], None]):
        for name in names:
            OBSERVE[name] = check
        return check
    return register


# --- experiment.sh: what `begin` prints for bash, and the prompt it renders -----------------
@observes("COMPUTE_TARGET")
def _(p):
    p.env_file(COMPUTE_TARGET="sandbox")
    v = p.begin()
    assert (v["COMPUTE_TARGET"], v["IS_CLOUD"]) == ("sandbox", "1") and "MANDATORY — SANDBOX" in v["prompt"]


@observes("EXP_AGENT")
def _(p):
    p.env_file(EXP_AGENT="codex")
    p.mp.setenv("PATH", f"{_stub_bin(p.root, 'codex', 'echo codex-cli 0.169.0')}:{os.environ['PATH']}")
    assert p.begin()["EXP_AGENT"] == "codex"


@observes("EXP_AGENT_VERSION")
def _(p):
    """Set by experiment.sh once it has checked the CLI's version: with it, no check runs."""
    p.env_file(EXP_AGENT="codex", EXP_AGENT_VERSION="codex 0.169.0")
    p.mp.setenv("PATH", f"{_stub_bin(p.root, 'codex', 'exit 1')}:{os.environ['PATH']}")
    assert p.begin()["EXP_AGENT"] == "codex"


@observes("API_TIMEOUT_MS", "CLAUDE_CODE_MAX_RETRIES")
def _(p):
    p.env_file(EXP_AGENT="claude", API_TIMEOUT_MS="4242", CLAUDE_CODE_MAX_RETRIES="7")
    p.mp.setenv("PATH", f"{_stub_bin(p.root, 'claude', 'echo 2.1.330 Claude Code')}:{os.environ['PATH']}")
    env = p.begin()["AGENT_ENV"]
    assert "API_TIMEOUT_MS=4242" in env and "CLAUDE_CODE_MAX_RETRIES=7" in env


def _stub_bin(root: Path, name: str, body: str) -> Path:
    d = root.parent / "bin"
    d.mkdir(exist_ok=True)
    (d / name).write_text(f"#!/bin/sh\n{body}\n")
    (d / name).chmod(0o755)
    return d


@observes("EXP_PROJECT_ROOT")
def _(p):
    """It says where the env file is, so it cannot come from that file: from the environment
    it makes the file of that directory apply from anywhere."""
    (p.root / ".orchestration-kit.env").write_text("COMPUTE_TARGET=sandbox\n")
    p.mp.chdir(p.root.parent)
    assert Settings()["COMPUTE_TARGET"] == "sandbox" and Settings().root == p.root


@observes("KIT_STATE_DIR")
def _(p):
    p.env_file(KIT_STATE_DIR="state-here")
    assert p.begin()["PROMPT_FILE"].startswith("state-here/prompts/")


@observes("EXP_LOG_DIR")
def _(p):
    p.env_file(EXP_LOG_DIR="phase-logs")
    assert p.begin()["EXP_LOG_DIR"] == "phase-logs"


@observes("RESULTS_ROOT")
def _(p):
    p.env_file(RESULTS_ROOT="out")
    assert p.begin()["RESULTS_PATH"] == "out/exp-001-toy-logreg"


@observes("DATA_DIR")
def _(p):
    (p.root / "inputs").mkdir()
    p.env_file(COMPUTE_TARGET="sandbox", DATA_DIR="inputs")
    assert "--data-dirs inputs/" in p.begin()["prompt"]


@observes("ORCHESTRATION_KIT_ROOT")
def _(p):
    p.env_file(COMPUTE_TARGET="sandbox", ORCHESTRATION_KIT_ROOT="/opt/okit")
    assert "/opt/okit/tools/cloud-run run " in p.begin()["prompt"]


@observes("EXP_TIME_BUDGET")
def _(p):
    p.env_file(EXP_TIME_BUDGET="777")
    assert p.begin()["PHASE_BUDGET"] == "777"


@observes("EXP_PHASE_BUDGET")
def _(p):
    p.env_file(EXP_PHASE_BUDGET="123")
    assert p.begin("frame")["PHASE_BUDGET"] == "123"


@observes("EXP_WATCH_FOLLOW")
def _(p):
    from researchkit_py.experiment import cli, streamlog

    seen = []
    p.mp.setattr(streamlog, "follow", lambda path, keep_following=True: seen.append(keep_following))
    (p.root / ".kit-state" / "logs").mkdir(parents=True)
    (p.root / ".kit-state" / "logs" / "run.log").write_text("{}\n")
    p.env_file(EXP_WATCH_FOLLOW="0")
    assert p.cli(cli.main, "watch")[0] == 0 and seen == [False]


@observes("EXP_RESULTS_LOCKED")
def _(p):
    other = p.root / "results" / "exp-000-old" / "metrics.json"
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    p.env_file(EXP_RESULTS_LOCKED="1")
    from researchkit_py.experiment import cli

    code, out, err = p.cli(cli.main, "begin", "run", "--spec", SPEC)
    assert code == 0 and other.stat().st_mode & 0o200, "another experiment's results were locked"


# --- cloud-run, as the user runs it ------------------------------------------------------
@observes("MAX_GPU_HOURS")
def _(p):
    p.env_file(MAX_GPU_HOURS="2")
    assert "deadline 7200 s" in p.dry_run()[2]


@observes("RK_BACKEND")
def _(p):
    p.env_file(COMPUTE_TARGET="gce", RK_BACKEND="local")
    assert "on local with labels" in p.dry_run()[2]


@observes("RK_BUCKET")
def _(p):
    p.env_file(RK_BUCKET=f"file://{p.root.parent}/mine")
    assert f"bucket file://{p.root.parent}/mine;" in p.dry_run()[2]


@observes("RK_STATE_HOME")
def _(p):
    p.env_file(RK_STATE_HOME=f"{p.root.parent}/kit-state")
    assert f"bucket file://{p.root.parent}/kit-state/local/bucket;" in p.dry_run()[2]


@observes("RK_ENV_CACHE")
def _(p):
    p.env_file(RK_ENV_CACHE=f"{p.root.parent}/kit-envs")
    assert p.context().provider.env_cache() == f"{p.root.parent}/kit-envs"  # what the VM's setup is given


@observes("RK_CACHE_HOME")
def _(p):
    from researchkit_py.lifecycle import list_runs
    from researchkit_py.lifecycle.runlist import cache_path

    p.env_file(RK_CACHE_HOME=f"{p.root.parent}/kit-cache")
    ctx = p.context()
    run_id = "x-20260101-000000-00000001"
    ctx.store.write_json(f"runs/{run_id}/manifest.json", {"provider": "local", "instance": "rk-x", "command": "true",
                                                         "created_at": "2026-01-01T00:00:00Z"})
    ctx.store.write_json(f"runs/{run_id}/status.json", {"phase": "DONE", "exit_code": 0})
    assert [r["run_id"] for r in list_runs(ctx)] == [run_id]
    assert cache_path(ctx).is_relative_to(p.root.parent / "kit-cache") and cache_path(ctx).is_file()


@observes("RK_RESULTS_SUBDIR", "RK_HEARTBEAT_SECONDS", "RK_VM_PYTHON")
def _(p):
    p.env_file(RK_RESULTS_SUBDIR="outputs", RK_HEARTBEAT_SECONDS="13", RK_VM_PYTHON="/opt/py/bin/python3")
    script = p.dry_run()[1]
    assert "RK_RESULTS_SUBDIR=outputs\n" in script and "RK_HEARTBEAT=13\n" in script
    assert "RK_VM_PYTHON=/opt/py/bin/python3\n" in script


@observes("RK_MAX_BUNDLE_MB")
def _(p):
    p.env_file(RK_MAX_BUNDLE_MB="0.000001")
    code, _, err = p.dry_run()
    assert code == 1 and "RK_MAX_BUNDLE_MB" in err


@observes("RK_PRICE_PER_HOUR")
def _(p):
    """End to end, as the user runs it: the worst case cloud-run reports."""
    p.env_file(RK_PRICE_PER_HOUR="3")
    r = subprocess.run([str(REPO / "tools" / "cloud-run"), "run", "true", "--max-hours", "2", "--max-cost", "5",
                        "--dry-run"], capture_output=True, text=True, cwd=p.root, env=os.environ.copy())
    assert r.returncode == 1 and "worst case $6.00 (2 h of this machine) exceeds --max-cost $5.00" in r.stderr


@observes("RK_POLL_SECONDS")
def _(p):
    p.env_file(RK_POLL_SECONDS="7")
    assert p.context().poll_seconds() == 7


@observes("RK_SELF_DELETE_WAIT")
def _(p):
    from researchkit_py.clouds.base import Instance
    from researchkit_py.lifecycle import ensure_gone

    p.env_file(RK_SELF_DELETE_WAIT="0.3", RK_POLL_SECONDS="0.05")
    ctx = p.context()
    deleted = []
    p.mp.setattr(ctx.provider, "get", lambda name: Instance(name, "RUNNING"))
    p.mp.setattr(ctx.provider, "delete", deleted.append)
    t0 = time.time()
    assert ensure_gone(ctx, "rk-x") is False and deleted == ["rk-x"] and time.time() - t0 < 3


@observes("RK_CANCEL_WAIT")
def _(p):
    from researchkit_py.clouds.base import Instance
    from researchkit_py.lifecycle.cancel import cancel

    p.env_file(RK_CANCEL_WAIT="0.3", RK_POLL_SECONDS="0.05")
    ctx = p.context()
    deleted = []
    p.mp.setattr(ctx.provider, "get", lambda name: Instance(name, "RUNNING"))  # a VM that never stops
    p.mp.setattr(ctx.provider, "delete", deleted.append)
    t0 = time.time()
    status = cancel(ctx, "x-20260101-000000-00000000", "rk-x", "a test")
    assert deleted == ["rk-x"] and status["phase"] == "CANCELLED" and time.time() - t0 < 3


@observes("RK_REAP_INTERVAL")
def _(p):
    from researchkit_py.lifecycle import reap_if_due

    p.env_file(RK_REAP_INTERVAL="1000")
    ctx = p.context()
    listed = []
    p.mp.setattr(ctx.provider, "list", lambda: listed.append(1) or [])
    reap_if_due(ctx)
    reap_if_due(ctx)
    assert listed == [1]


@observes("RK_STORAGE_RETRIES", "RK_STORAGE_BACKOFF", "RK_TRANSFER_THREADS", "RK_NO_PROGRESS")
def _(p):
    p.env_file(RK_STORAGE_RETRIES="2", RK_STORAGE_BACKOFF="0.25", RK_TRANSFER_THREADS="3", RK_NO_PROGRESS="1")
    store = p.context().store
    assert (store.retries, store.backoff, store.threads, store.progress) == (2, 0.25, 3, False)


@observes("RK_LOCAL_GRACE")
def _(p):
    """How long a powered-off VM's trap gets: a command that ignores TERM is killed after it."""
    from researchkit_py import lifecycle

    p.env_file(RK_LOCAL_GRACE="0.5")
    ctx = p.context()
    plan = lifecycle.launch(ctx, lifecycle.LaunchOptions(command="trap '' TERM; sleep 300", detached=True))
    while ctx.provider.get(plan.manifest.instance) is None:
        time.sleep(0.1)
    time.sleep(1)
    t0 = time.time()
    ctx.provider.delete(plan.manifest.instance)
    assert time.time() - t0 < 3  # the default grace is 5 s


@observes("RK_KEEP_VM_DIR")
def _(p):
    """End to end: the VM's directory stays after the run (the supervisor must see the file's value)."""
    p.env_file(RK_KEEP_VM_DIR="1")
    r = subprocess.run([str(REPO / "tools" / "cloud-run"), "run", "echo kept", "--quiet"], capture_output=True,
                       text=True, cwd=p.root, env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stderr
    vms = Path(os.environ["RK_STATE_HOME"]) / "local" / "vms"
    assert [d.name for d in vms.iterdir()] == [f"rk-{r.stdout.strip()}"]


@observes("RK_DETACHED_COMMAND")
def _(p):
    from researchkit_py.detached import command_for

    p.env_file(RK_DETACHED_COMMAND="python go.py --exp {exp}")
    assert command_for(7, False, "", Settings()) == ("python go.py --exp 7", "RK_DETACHED_COMMAND")


@observes("RK_ARTIFACT_BUCKET")
def _(p):
    from researchkit_py import artifacts

    p.env_file(RK_ARTIFACT_BUCKET=f"file://{p.root.parent}/art")
    assert artifacts.open_artifacts(Settings()).store.url == f"file://{p.root.parent}/art"  # as main() opens it


@observes("RK_PREFLIGHT_BACKEND", "RK_LOCAL_MAX_HOURS")
def _(p):
    from researchkit_py import preflight

    p.env_file(RK_PREFLIGHT_BACKEND="gce", RK_LOCAL_MAX_HOURS="0.001")
    advice = json.loads(p.cli(preflight.main, SPEC, "--json")[1])
    assert (advice["where"], advice["backend"]) == ("remote", "gce") and "0.001 h local limit" in advice["reason"]


@observes("RK_LOCAL_MEMORY_GB")
def _(p):
    from researchkit_py import preflight

    p.env_file(RK_LOCAL_MEMORY_GB="0.01")
    advice = json.loads(p.cli(preflight.main, SPEC, "--json")[1])
    assert "more than this machine can spare (0 GB)" in advice["reason"]


# --- the clouds' own settings: the provider and store the CLI's settings build ------------
@observes("GCE_PROJECT", "GCE_ZONE", "GCE_ZONES", "GCE_MACHINE_TYPE", "GCE_IMAGE_FAMILY", "GCE_IMAGE_PROJECT",
          "GCE_DISK_GB", "GCE_SERVICE_ACCOUNT", "GCE_SPOT", "RK_GCE_API_ENDPOINT")
def _(p):
    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.registry import get_provider

    p.env_file(GCE_PROJECT="proj-x", GCE_ZONE="europe-west4-a", GCE_ZONES="europe-west4-b", GCE_MACHINE_TYPE="n2-standard-16",
               GCE_IMAGE_FAMILY="debian-12", GCE_IMAGE_PROJECT="debian-cloud", GCE_DISK_GB="77",
               GCE_SERVICE_ACCOUNT="vm@proj-x.iam", GCE_SPOT="1", RK_GCE_API_ENDPOINT="http://127.0.0.1:9")
    gce = get_provider("gce", Settings())
    body = json.dumps(gce.request_body(InstanceRequest("rk-x", "x", "#!/bin/bash", {}, 60)))
    for text in ("proj-x", "europe-west4-a", "n2-standard-16", "debian-12", "debian-cloud", '"77"', "vm@proj-x.iam",
                 '"SPOT"'):
        assert text in body, text
    assert gce.zones == ["europe-west4-a", "europe-west4-b"] and gce.endpoint == "http://127.0.0.1:9"


@observes("CLOUDSDK_CONFIG")
def _(p):
    from researchkit_py.clouds.registry import get_provider

    conf = p.root.parent / "gcloud"
    (conf / "configurations").mkdir(parents=True)
    (conf / "active_config").write_text("work")
    (conf / "configurations" / "config_work").write_text("[core]\nproject = from-gcloud\n")
    p.env_file(CLOUDSDK_CONFIG=str(conf))
    assert get_provider("gce", Settings()).project == "from-gcloud"


@observes("GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST")
def _(p):
    from researchkit_py.clouds.gce.store import gcs_client
    from researchkit_py.clouds.registry import open_store

    p.env_file(GOOGLE_CLOUD_PROJECT="gcp-y", STORAGE_EMULATOR_HOST="http://127.0.0.1:9")
    client = gcs_client(Settings())  # what creates the default bucket
    assert client.project == "gcp-y" and client._connection.API_BASE_URL == "http://127.0.0.1:9"
    store = open_store("gs://b/p", Settings())  # what reads and writes it
    assert store.vm.api == "http://127.0.0.1:9" and store.vm.emulator


@observes("EC2_INSTANCE_TYPE", "EC2_AMI", "EC2_AMI_PARAM", "EC2_INSTANCE_PROFILE", "EC2_SUBNETS", "EC2_SECURITY_GROUP",
          "EC2_SPOT")
def _(p):
    from researchkit_py.clouds.registry import get_provider

    p.env_file(EC2_INSTANCE_TYPE="m6i.large", EC2_AMI="ami-123", EC2_AMI_PARAM="/my/ami", EC2_INSTANCE_PROFILE="prof",
               EC2_SUBNETS="subnet-a,subnet-b", EC2_SECURITY_GROUP="sg-1", EC2_SPOT="1")
    ec2 = get_provider("ec2", Settings())
    assert (ec2.instance_type, ec2.ami, ec2.ami_param, ec2.profile, ec2.subnets, ec2.security_group, ec2.spot) == \
        ("m6i.large", "ami-123", "/my/ami", "prof", ["subnet-a", "subnet-b"], "sg-1", True)


@observes("GCE_GPU_IMAGE_FAMILY", "GCE_GPU_IMAGE_PROJECT", "GCE_GPU_DISK_GB")
def _(p):
    from researchkit_py.clouds.registry import get_provider

    p.env_file(GCE_PROJECT="proj-x", GCE_GPU_IMAGE_FAMILY="my-cuda", GCE_GPU_IMAGE_PROJECT="my-images", GCE_GPU_DISK_GB="200")
    assert get_provider("gce", Settings()).gpu_image == {"image_family": "my-cuda", "image_project": "my-images",
                                                        "disk_size_gb": 200}


@observes("EC2_GPU_AMI", "EC2_GPU_AMI_PARAM")
def _(p):
    from researchkit_py.clouds.registry import get_provider

    p.env_file(EC2_GPU_AMI="ami-gpu", EC2_GPU_AMI_PARAM="/my/gpu-ami")
    ec2 = get_provider("ec2", Settings())
    assert (ec2.gpu_ami, ec2.gpu_ami_param) == ("ami-gpu", "/my/gpu-ami")


@observes("RK_GPU_DRIVER_WAIT")
def _(p):
    """The wait for a driver still installing, rendered into the startup script of a GPU run."""
    p.env_file(RK_GPU_DRIVER_WAIT="123")
    code, out, err = p.dry_run("--gpu", "L4")
    assert code == 0, err
    assert "123" in next(line for line in out.splitlines() if "gpu-check" in line), out


@observes("AWS_EC2_METADATA_SERVICE_ENDPOINT", "UV_INDEX_URL")
def _(p):
    """Read on the VM, from the environment its startup script gives it (`--env`), not from the
    client's env file: the settings the VM builds take them (test_vm_side.py and the bare-image
    tests use them end to end)."""
    from researchkit_py.clouds.ec2.vm import VMBucket
    from researchkit_py.vm_setup import index_url

    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://10.0.0.9:8080", "UV_INDEX_URL": "http://10.0.0.9/simple"}
    vm = Settings(environ=env, read_file=False)
    assert VMBucket.open_url("s3://b/p", vm).role.base == "http://10.0.0.9:8080/latest/"
    assert index_url(vm.environ) == "http://10.0.0.9/simple/"


@observes("AWS_REGION", "AWS_ENDPOINT_URL")
def _(p):
    from researchkit_py.clouds.ec2.aws import aws_client

    p.env_file(AWS_REGION="eu-north-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    client = aws_client("s3", Settings())
    assert (client.meta.region_name, client.meta.endpoint_url) == ("eu-north-1", "http://127.0.0.1:9")


@observes("AWS_DEFAULT_REGION")
def _(p):
    from researchkit_py.clouds.ec2.aws import aws_client

    p.env_file(AWS_DEFAULT_REGION="ap-south-1")
    assert aws_client("s3", Settings()).meta.region_name == "ap-south-1"


def test_every_documented_setting_is_observed():
    assert set(OBSERVE) == set(_documented_settings())


@pytest.mark.parametrize("name", sorted(_documented_settings()))
def test_the_env_file_setting_takes_effect(name, proj):
    OBSERVE[name](proj)
