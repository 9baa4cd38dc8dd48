"""GPU runs on the emulated clouds: fake VMs with a fake GPU (tests/py/fake_gpu.py), one whose
driver is too old, one that finds no device, one without any; GPU quota and capacity refusals
on the fake Compute API and injected into EC2; the dry runs; the GPU example on a CPU-only
machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from emulators import ubuntu_amis
from fake_gce import pool_exhausted, quota_exceeded
from fake_gpu import add_fake_torch, nvidia_smi

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gpu"
PROBE = ('python -c "import json, os, torch; json.dump({\'device\': torch.cuda.get_device_name(0)}, '
         'open(os.path.join(os.environ[\'RESULTS_DIR\'], \'metrics.json\'), \'w\'))"')


def tool(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, env=os.environ.copy(), timeout=timeout)


def detached(*args: str) -> subprocess.CompletedProcess:
    return tool(sys.executable, "-m", "researchkit_py.detached", *args)


def gpu_project(project: Path, name: str = "exp-001-gpu-speedup") -> Path:
    """The project with the GPU example's spec (1 × L4) and a fake torch."""
    (project / "experiments").mkdir(exist_ok=True)
    spec = project / "experiments" / f"{name}.md"
    spec.write_text((EXAMPLE / "experiments" / "exp-001-gpu-speedup.md").read_text())
    add_fake_torch(project)
    return spec


# --- fake VMs with and without a GPU ---------------------------------------------------------------
def test_a_gce_gpu_vm_checks_its_gpu_then_runs(gce, project):
    gpu_project(project)
    gce.vms.extra_bin["nvidia-smi"] = nvidia_smi("ok")
    r = detached("--exp", "1", "--command", PROBE)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    gce.vms.wait_all_gone()
    (insert,) = gce.inserts()
    body = insert["body"]
    assert body["machineType"].endswith("/g2-standard-4") and body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert body["disks"][0]["initializeParams"]["sourceImage"].endswith("/family/common-cu129-ubuntu-2204-nvidia-580")
    assert any(e["path"].endswith("/aggregated/acceleratorTypes") and e["query"]["filter"] == "name = nvidia-l4"
               for e in gce.log)
    detached("download", "1", "--output-dir", str(project / "out"))
    assert json.loads((project / "out" / "metrics.json").read_text()) == {"device": "NVIDIA L4"}
    state = json.loads((project / "out" / ".cloud-run-state.json").read_text())
    status = state["status"]
    assert status["phase"] == "DONE" and state["run_id"] == run_id
    assert {k: status["gpu"][k] for k in ("ok", "devices", "driver", "cuda", "torch", "torch_cuda")} == {
        "ok": True, "devices": ["NVIDIA L4"], "driver": "580.65.06", "cuda": "12.9", "torch": "2.5.1+cu124",
        "torch_cuda": "12.4"}
    log = detached("logs", "1").stdout
    assert log.index("researchkit: GPU ready") < log.index("researchkit: running:")


@pytest.mark.parametrize("state,problem", [
    ("old-driver", "the NVIDIA driver 470.256.02 supports CUDA up to 11.4 but torch 2.5.1+cu124 was built for CUDA "
                   "12.4: the driver is too old"),
    ("no-device", "nvidia-smi failed (exit 6): No devices were found"),
    (None, "nvidia-smi is not on this VM: its image has no NVIDIA driver"),
])
def test_a_gce_vm_without_a_usable_gpu_fails_before_the_command_and_goes(gce, project, monkeypatch, state, problem):
    gpu_project(project)
    monkeypatch.setenv("RK_GPU_DRIVER_WAIT", "1")
    if state:
        gce.vms.extra_bin["nvidia-smi"] = nvidia_smi(state)
    run_id = detached("--exp", "1", "--command", 'touch "$RESULTS_DIR/ran"').stdout.strip()
    gce.vms.wait_all_gone()
    assert gce.names() == []  # the VM is gone
    (row,) = json.loads(detached("list", "--json").stdout)
    assert (row["run_id"], row["phase"], row["cause"], row["exit_code"]) == (run_id, "FAILED", "gpu_unavailable", None)
    log = detached("logs", "1").stdout
    assert f"researchkit: GPU unavailable: {problem}" in log and "researchkit: running:" not in log
    if state == "old-driver":
        assert "researchkit: nvidia-smi: NVIDIA L4 (23034 MiB); driver 470.256.02, CUDA 11.4" in log


@pytest.mark.waits(15)
def test_an_ec2_gpu_vm_boots_the_deep_learning_ami_and_runs(ec2, project, monkeypatch):
    from researchkit_py.clouds.ec2.aws import aws_client

    spec = gpu_project(project)
    gpu_ami = next(i for i in ubuntu_amis(ec2.ec2) if i != ec2.ami)
    aws_client("ssm").put_parameter(Name="/researchkit/test/gpu-ami", Value=gpu_ami, Type="String")
    monkeypatch.setenv("EC2_GPU_AMI_PARAM", "/researchkit/test/gpu-ami")
    ec2.extra_bin["nvidia-smi"] = nvidia_smi("ok")
    r = tool(str(REPO / "tools" / "cloud-run"), "run", PROBE, "--backend", "ec2", "--spec", str(spec),
             "--output-dir", str(project / "out"), "--quiet")
    assert r.returncode == 0, r.stderr + ec2.consoles()
    ec2.wait_all_gone()
    (inst,) = [i for res in ec2.ec2.describe_instances()["Reservations"] for i in res["Instances"]]
    assert (inst["InstanceType"], inst["ImageId"]) == ("g6.xlarge", gpu_ami)
    assert json.loads((project / "out" / "metrics.json").read_text()) == {"device": "NVIDIA L4"}
    assert "researchkit: GPU ready" in (project / "out" / ".cloud-run.log").read_text()


# --- quota and capacity on the fake Compute API ---------------------------------------------------------
def _gce_create(gce, monkeypatch, zones: str, gpu: str = "L4"):
    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.gce.provider import GCEProvider
    from researchkit_py.machine import choose
    from researchkit_py.settings import Settings

    gce.on_insert = None  # no VM needed
    monkeypatch.setenv("GCE_ZONES", zones)
    m = choose("gce", Settings(), gpu=gpu)
    req = InstanceRequest("rk-g", "g-run", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 600,
                          m.machine_type, False, m.gpu_count, m.accelerator, m.attach)
    return GCEProvider(Settings()).create(req)


def _insert_zones(gce) -> list[str]:
    return [e["path"].split("/zones/")[1].split("/")[0] for e in gce.inserts()]


def test_a_pool_exhausted_zone_moves_to_a_zone_gce_says_has_the_gpu(gce, monkeypatch):
    gce.fail_zones["us-central1-a"] = pool_exhausted("test-proj", "us-central1-a", "g2-standard-4",
                                                     ["us-central1-c", "us-west1-b"])
    gce.partial_zones.add("us-central1-a")
    inst = _gce_create(gce, monkeypatch, "us-central1-f,us-east4-a")
    # us-central1-c: named by GCE, in a configured region, offers nvidia-l4; us-central1-f offers none
    assert (_insert_zones(gce), inst.zone) == (["us-central1-a", "us-central1-c"], "us-central1-c")
    assert any(e["method"] == "DELETE" and "/zones/us-central1-a/" in e["path"] for e in gce.log)
    assert len({e["query"]["requestId"] for e in gce.inserts()}) == 2


def test_a_regional_gpu_quota_skips_its_region(gce, monkeypatch):
    gce.fail_zones["us-central1-a"] = quota_exceeded("NVIDIA_L4_GPUS", 0, "us-central1")
    inst = _gce_create(gce, monkeypatch, "us-central1-b,us-east4-a")
    assert (_insert_zones(gce), inst.zone) == (["us-central1-a", "us-east4-a"], "us-east4-a")


def test_a_global_gpu_quota_is_one_line_naming_it(gce, monkeypatch):
    from researchkit_py.errors import CapacityError

    gce.fail_zones["us-central1-a"] = quota_exceeded("GPUS_ALL_REGIONS", 0)
    with pytest.raises(CapacityError) as e:
        _gce_create(gce, monkeypatch, "us-central1-b,us-east4-a")
    assert _insert_zones(gce) == ["us-central1-a"] and gce.names() == []
    assert str(e.value) == (
        "GCE quota GPUS_ALL_REGIONS stops g2-standard-4 (us-central1-a: quota GPUS_ALL_REGIONS exceeded (limit 0 in all "
        "regions)); request more at https://console.cloud.google.com/iam-admin/quotas?project=test-proj (filter by the "
        "quota's name)")


def test_no_zone_with_the_gpu_or_with_capacity_says_where_it_is(gce, monkeypatch):
    from researchkit_py.errors import CapacityError

    with pytest.raises(CapacityError, match=r"none of us-central1-b offers nvidia-tesla-p100; it is offered in "
                                            r"us-central1-c, us-central1-f: set GCE_ZONE or GCE_ZONES"):
        monkeypatch.setenv("GCE_ZONE", "us-central1-b")
        _gce_create(gce, monkeypatch, "", gpu="P100")
    assert gce.inserts() == []
    monkeypatch.setenv("GCE_ZONE", "us-central1-a")
    gce.fail_zones["us-central1-a"] = pool_exhausted("test-proj", "us-central1-a", "n1-standard-4", ["us-west1-b"])
    with pytest.raises(CapacityError, match=r"no capacity for n1-standard-4 with 1 × nvidia-tesla-t4 in us-central1-a "
                                            r"\(us-central1-a: ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS\); add zones "
                                            r"to GCE_ZONES \(GCE reports capacity in us-west1-b\)"):
        _gce_create(gce, monkeypatch, "", gpu="T4")


def test_a_gpu_quota_through_the_cli_is_one_line(gce, project):
    gpu_project(project)
    gce.fail_zones["us-central1-a"] = quota_exceeded("NVIDIA_L4_GPUS", 0, "us-central1")
    r = detached("--exp", "1", "--command", "true")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "GCE quota NVIDIA_L4_GPUS stops g2-standard-4" in r.stderr and "iam-admin/quotas?project=test-proj" in r.stderr


# --- capacity and quota on EC2 (moto cannot refuse: the refusals are injected) ------------------------
def _ec2_refusing(ec2, monkeypatch, refuse):
    """An EC2Provider whose RunInstances first meets `refuse(params)` (an error or None), then moto;
    every call is checked against botocore's model first."""
    from botocore.exceptions import ClientError
    from botocore.session import get_session
    from botocore.validate import validate_parameters

    from researchkit_py.clouds.ec2.provider import EC2Provider
    from researchkit_py.settings import Settings

    ec2._stop.set()  # no VM needed
    shape = get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    provider, calls = EC2Provider(Settings()), []
    real = provider.client.run_instances

    def run_instances(**params):
        validate_parameters({**params, "UserData": "eA=="}, shape)
        calls.append(params)
        error = refuse(params)
        if error:  # as EC2 answers: the code, its message, and an HTTP status (500 for capacity, 400 for limits)
            raise ClientError({"Error": {"Code": error[0], "Message": error[1]},
                               "ResponseMetadata": {"HTTPStatusCode": 500 if "Capacity" in error[0] else 400}},
                              "RunInstances")
        return real(**params)

    monkeypatch.setattr(provider.client, "run_instances", run_instances)
    return provider, calls


def _gpu_request(spot: bool = False):
    from researchkit_py.clouds.base import InstanceRequest

    return InstanceRequest("rk-g", "g-run", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 600,
                           "g5.xlarge", spot, 1)


# The message EC2 sends with InsufficientInstanceCapacity (it names the zones that have capacity).
NO_CAPACITY = ("We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested "
               "(us-east-1a). Our system will be working on provisioning additional capacity. You can currently get "
               "g5.xlarge capacity by not specifying an Availability Zone in your request or choosing us-east-1b, "
               "us-east-1c.")
VCPU_LIMIT = ("You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket "
              "that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request "
              "to request an adjustment to this limit.")


def test_ec2_capacity_moves_to_a_zone_ec2_names(ec2, monkeypatch):
    monkeypatch.setenv("EC2_GPU_AMI", ec2.ami)
    provider, calls = _ec2_refusing(ec2, monkeypatch, lambda p: None if "Placement" in p else
                                    ("InsufficientInstanceCapacity", NO_CAPACITY))
    inst = provider.create(_gpu_request())
    assert [c.get("Placement") for c in calls] == [None, {"AvailabilityZone": "us-east-1b"}]
    assert inst.zone == "us-east-1b" and len({c["ClientToken"] for c in calls}) == 2


def test_ec2_vcpu_quota_is_one_line_naming_it(ec2, monkeypatch):
    from researchkit_py.errors import CapacityError

    monkeypatch.setenv("EC2_GPU_AMI", ec2.ami)
    monkeypatch.setenv("EC2_SPOT", "1")
    provider, calls = _ec2_refusing(ec2, monkeypatch, lambda p: ("MaxSpotInstanceCountExceeded", "Max spot instance "
                                    "count exceeded") if "InstanceMarketOptions" in p else ("VcpuLimitExceeded", VCPU_LIMIT))
    with pytest.raises(CapacityError) as e:
        provider.create(_gpu_request(spot=True))
    assert ["InstanceMarketOptions" in c for c in calls] == [True, False]  # spot's quota: on-demand next
    assert str(e.value) == ("EC2 quota 'Running On-Demand G and VT instances' (L-DB2E81BA) is too low for g5.xlarge "
                            "in us-east-1: request more at https://us-east-1.console.aws.amazon.com/servicequotas/home/"
                            "services/ec2/quotas/L-DB2E81BA")


def test_ec2_subnets_in_zones_without_the_instance_type_are_skipped(ec2, monkeypatch):
    subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.ec2.describe_subnets()["Subnets"]}
    monkeypatch.setenv("EC2_SUBNETS", f"{subnets['us-east-1e']},{subnets['us-east-1b']}")  # no g5 in us-east-1e
    monkeypatch.setenv("EC2_GPU_AMI", ec2.ami)
    provider, calls = _ec2_refusing(ec2, monkeypatch, lambda p: None)
    provider.create(_gpu_request())
    assert [c["SubnetId"] for c in calls] == [subnets["us-east-1b"]]


# --- dry runs show the GPU machine, its image, TERMINATE and the worst case ----------------------------
def test_detached_dry_run_of_a_gpu_experiment(gce, project):
    gpu_project(project, "exp-001-gpu-speedup")
    r = detached("--exp", "1", "--dry-run")
    assert r.returncode == 0, r.stderr
    for shown in ("machine: g2-standard-4 (1 × L4) (the spec's compute profile)\nimage: projects/deeplearning-platform-"
                  "release/global/images/family/common-cu129-ubuntu-2204-nvidia-580\nworst case: $2.83 (4 h)",
                  '"onHostMaintenance": "TERMINATE"', '"automaticRestart": false',
                  '"sourceImage": "projects/deeplearning-platform-release/global/images/family/'
                  'common-cu129-ubuntu-2204-nvidia-580"', '"key": "install-nvidia-driver"', "nothing was created"):
        assert shown in r.stderr
    assert 'rk gpu-check "$PWD" L4:1 300' in r.stdout
    assert gce.log == []


def test_cloud_run_dry_run_of_a_gpu_spec_on_ec2(ec2, project, monkeypatch):
    spec = gpu_project(project)
    monkeypatch.setenv("EC2_GPU_AMI_PARAM", "/researchkit/test/ubuntu-ami")  # the fixture's parameter
    r = tool(str(REPO / "tools" / "cloud-run"), "run", "python train.py", "--backend", "ec2", "--spec", str(spec),
             "--dry-run")
    assert r.returncode == 0, r.stderr
    for shown in (f"machine: g6.xlarge (1 × L4) (the spec's compute profile)\nimage: {ec2.ami} (the SSM parameter "
                  "/researchkit/test/ubuntu-ami)\nworst case: $3.22 (4 h)",
                  '"InstanceType": "g6.xlarge"', f'"ImageId": "{ec2.ami}"'):
        assert shown in r.stderr
    assert [i for res in ec2.ec2.describe_instances()["Reservations"] for i in res["Instances"]] == []


def test_max_cost_counts_the_gpus(gce, project):
    run = [str(REPO / "tools" / "cloud-run"), "run", "true", "--backend", "gce", "--max-hours", "2", "--max-cost", "50",
           "--dry-run"]
    r = tool(*run, "--gpu", "A100:8")
    assert r.returncode == 1 and r.stderr == ("cloud-run: worst case $58.77 (2 h of a2-highgpu-8g (8 × A100)) exceeds "
                                              "--max-cost $50.00; lower --max-hours or choose a cheaper --machine-type\n")
    v100 = tool(*run, "--gpu", "V100:8")  # n1-standard-64 at $3.04/h and 8 attached V100s at $2.48/h each
    assert v100.returncode == 0 and "machine: n1-standard-64 (8 × V100) (--gpu)\n" in v100.stderr
    assert "\nworst case: $45.76 (2 h)\n" in v100.stderr
    assert gce.log == []


# --- the GPU example on a CPU-only machine --------------------------------------------------------------
@pytest.mark.waits(20)
def test_the_gpu_example_on_a_machine_without_torch_is_inconclusive(tmp_path):
    """examples/gpu through `experiment.sh cycle` on the sandbox target, with this test
    environment's python as the VM's (nothing installed): without torch, train.py records the
    abort and READ says INCONCLUSIVE. (Where torch is installed but no GPU, it trains on the CPU:
    accuracy passes, gpu.* are missing, INCONCLUSIVE again; on a GPU, the speedup decides.)"""
    if subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("torch is installed here: this test is about a machine without it")
    project = tmp_path / "gpu"
    shutil.copytree(EXAMPLE, project)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    env = {**os.environ, "EXP_AGENT": "scripted", "EXP_PROJECT_ROOT": str(project), "RK_VM_PYTHON": sys.executable}
    r = subprocess.run([str(REPO / "experiment.sh"), "cycle", "experiments/exp-001-gpu-speedup.md"], cwd=project,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verdict: INCONCLUSIVE" in r.stdout
    results = project / "results" / "exp-001-gpu-speedup"
    assert json.loads((results / "metrics.json").read_text())["device"] == "none"
    assert "the run was aborted: torch is not installed" in (results / "analysis.md").read_text()
