"""GPU runs, client side: the profile → machine mapping (one answer for preflight, the RUN
directive and the launch), request bodies of every GPU shape checked against the Compute Engine
v1 discovery document and botocore's EC2 model, prices, the protocol's gpu_unavailable, and
what READ says about the GPU a run had. (tests/py/test_gpu_vms.py: VMs, quotas, capacity.)"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from researchkit_py import protocol
from researchkit_py.clouds.base import InstanceRequest, Machine
from researchkit_py.clouds.ec2.cloud import CLOUD as EC2
from researchkit_py.clouds.gce.cloud import CLOUD as GCE
from researchkit_py.clouds.registry import price_per_hour
from researchkit_py.errors import KitError, UsageError
from researchkit_py.machine import choose
from researchkit_py.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gpu" / "experiments" / "exp-001-gpu-speedup.md"
PROFILE = """compute_type: {ct}
estimated_rows: 1000
model_type: mlp
sequential_fits: 1
parallelizable: false
memory_gb: 4
gpu_type: {gpu}
{count}estimated_wall_hours: 0.5"""


def spec(tmp_path: Path, gpu: str = "L4", count: int | None = None, ct: str = "gpu", name: str = "exp-001-g") -> Path:
    text = EXAMPLE.read_text()
    head = text.split("### Compute Profile")[0]
    budget = text.split("## Budget")[1]
    p = tmp_path / "experiments" / f"{name}.md"
    p.parent.mkdir(exist_ok=True)
    fields = PROFILE.format(ct=ct, gpu=gpu, count=f"gpu_count: {count}\n" if count is not None else "")
    p.write_text(f"{head}### Compute Profile\n```yaml\n{fields}\n```\n\n## Budget{budget}")
    return p


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(tmp_path, {"HOME": str(tmp_path), **env})


# --- one answer: profile and flags → machine ---------------------------------------------------
@pytest.mark.parametrize("cloud,gpu,count,machine_type,attached", [
    ("gce", "L4", None, "g2-standard-4", ""), ("gce", "nvidia-l4", 4, "g2-standard-48", ""),
    ("gce", "A100", 2, "a2-highgpu-2g", ""), ("gce", "A100 80GB", 1, "a2-ultragpu-1g", ""),
    ("gce", "H100", 8, "a3-highgpu-8g", ""), ("gce", "Tesla T4", 2, "n1-standard-8", "nvidia-tesla-t4"),
    ("gce", "V100", None, "n1-standard-8", "nvidia-tesla-v100"), ("gce", "P100", 4, "n1-standard-16", "nvidia-tesla-p100"),
    ("gce", "any", None, "g2-standard-4", ""),
    ("ec2", "A10G", None, "g5.xlarge", ""), ("ec2", "L4", 4, "g6.12xlarge", ""),
    ("ec2", "A100", None, "p4d.24xlarge", ""), ("ec2", "H100", None, "p5.48xlarge", ""),
])
def test_the_profile_names_the_gpu_shape(tmp_path, cloud, gpu, count, machine_type, attached):
    m = choose(cloud, settings(tmp_path), spec=spec(tmp_path, gpu, count))
    assert (m.machine_type, m.accelerator if m.attach else "") == (machine_type, attached)
    assert m.gpu_count == (count or {"A100": 8, "H100": 8}.get(gpu if cloud == "ec2" else "", 1))


def test_flags_override_the_profile_and_explicit_types_keep_their_gpus(tmp_path):
    s, p = settings(tmp_path), spec(tmp_path, "L4")
    assert choose("gce", s, gpu="A100:4", spec=p).machine_type == "a2-highgpu-4g"
    assert choose("gce", s, gpu="none", spec=p) == Machine("n2-standard-4", source="the default (GCE_MACHINE_TYPE)")
    m = choose("gce", s, machine_type="a2-ultragpu-2g", spec=p)  # its own GPUs, whatever the spec says
    assert (m.gpu, m.gpu_count, m.attach) == ("A100-80GB", 2, False)
    t4 = choose("gce", s, machine_type="n1-highmem-8", gpu="T4:2")
    assert (t4.machine_type, t4.accelerator, t4.gpu_count, t4.attach) == ("n1-highmem-8", "nvidia-tesla-t4", 2, True)
    assert choose("gce", s, machine_type="a3-megagpu-8g").gpu_count == 1  # a GPU type beyond the table
    assert choose("ec2", s, machine_type="g6e.xlarge").gpu == "GPU"
    assert choose("gce", s, machine_type="n2-standard-8", spec=p).gpu_count == 0  # said on stderr
    with pytest.raises(UsageError, match="cannot be attached"):
        choose("gce", s, machine_type="n2-standard-8", gpu="T4")
    with pytest.raises(UsageError, match="carries 1 × L4, not --gpu A100"):
        choose("gce", s, machine_type="g2-standard-4", gpu="A100")
    with pytest.raises(UsageError, match="TYPE:COUNT"):
        choose("gce", s, gpu="L4:two")


@pytest.mark.parametrize("gpu,count,message", [
    ("RTX4090", None, "GCE has no RTX4090 GPU in researchkit's table; use one of L4, A100, A100-80GB, H100, T4"),
    ("L4", 3, "GCE offers L4 GPUs 1, 2, 4, 8 at a time, not 3"),
    ("L4", "two", "gpu_count must be a whole number of GPUs, not 'two'"),
])
def test_a_gpu_the_cloud_cannot_give_is_one_line(tmp_path, gpu, count, message):
    p = spec(tmp_path, gpu, None)
    if count is not None:
        p.write_text(p.read_text().replace("estimated_wall_hours", f"gpu_count: {count}\nestimated_wall_hours"))
    with pytest.raises(KitError, match=re.escape(message)):
        choose("gce", settings(tmp_path), spec=p)


def test_cpu_specs_keep_preflights_sizing_and_the_sandbox_checks_only_what_is_asked(tmp_path):
    s = settings(tmp_path, RK_LOCAL_MAX_HOURS="0.1")
    cpu = spec(tmp_path, "none", ct="cpu")
    assert choose("ec2", s, spec=cpu).machine_type == "c6i.xlarge"  # 0.5 h > 0.1 h: remote, cpu_small
    assert choose("gce", settings(tmp_path), spec=cpu).source == "the default (GCE_MACHINE_TYPE)"  # local: default
    assert choose("gce", s, spec=tmp_path / "experiments" / "absent.md").machine_type == "n2-standard-4"
    assert choose("local", s, spec=spec(tmp_path, "H100")).gpu_count == 0  # this machine is what it is
    assert choose("local", s, gpu="l4:2") == Machine("", "L4", 2, source="--gpu")  # ... but --gpu is checked


def test_gpu_prices_include_attached_accelerators(tmp_path):
    s = settings(tmp_path)
    assert price_per_hour("gce", choose("gce", s, gpu="T4:2"), s) == round(0.38 + 2 * 0.35, 4)
    assert price_per_hour("gce", choose("gce", s, gpu="L4"), s) == 0.7068
    for cloud in (GCE, EC2):  # every shape in the table has a price
        for shape in cloud.gpus:
            m = Machine(shape.machine_type, shape.gpu, shape.count, shape.accelerator, shape.attach)
            assert price_per_hour(cloud.name, m, s) > 0


def test_preflight_the_directive_and_the_launch_agree(tmp_path, project):
    """One answer: preflight's recommendation, the RUN directive's machine and the launch's."""
    from researchkit_py.experiment.phases import _begin_run
    from researchkit_py.experiment.spec import load_spec
    from researchkit_py.preflight import advise

    p = spec(project, "T4", 2)
    s = Settings(project, {**os.environ, "COMPUTE_TARGET": "gce", "GCE_PROJECT": "p"})
    advice, named = advise(str(p), s)
    directive = _begin_run(load_spec(p), project / "results" / p.stem, {
        "COMPUTE_TARGET": "gce", "ORCHESTRATION_KIT_ROOT": str(REPO), "DATA_DIR": "data", "RESULTS_ROOT": "results",
        "KIT_STATE_DIR": str(project / ".kit-state")}, s, _Out())
    assert (advice.instance_type, advice.gpu, advice.gpu_count) == ("n1-standard-8", "T4", 2)
    assert named == "n1-standard-8 (2 × T4)" and advice.price_per_hour == 1.08
    assert "The machine: n1-standard-8 (2 × T4) (cloud-run picks it from --spec)." in directive
    assert choose("gce", s, spec=p).describe() == named


class _Out:
    def set(self, *args, **kwargs):
        pass


# --- request bodies against the APIs' own descriptions ----------------------------------------------
def _discovery() -> dict:
    import googleapiclient

    return json.loads((Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" /
                       "compute.v1.json").read_text())


def schema_problems(value, schema: dict, doc: dict, where: str = "") -> list[str]:
    """Every field of `value` against a discovery-document schema: names, types, enums, patterns,
    int64 as strings, no output-only fields, the fields instances.insert requires."""
    if "$ref" in schema:
        schema = doc["schemas"][schema["$ref"]]
    kind, out = schema.get("type"), []
    if schema.get("readOnly"):
        return [f"{where}: output only"]
    if kind == "object":
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        for k, v in value.items():
            sub = props.get(k) or extra
            out += schema_problems(v, sub, doc, f"{where}.{k}") if sub else [f"{where}.{k}: not in the schema"]
        out += [f"{where}.{k}: required" for k, p in props.items()
                if "compute.instances.insert" in p.get("annotations", {}).get("required", []) and k not in value]
    elif kind == "array":
        out += [p for i, item in enumerate(value) for p in schema_problems(item, schema["items"], doc, f"{where}[{i}]")]
    elif kind == "string":
        if not isinstance(value, str) or ("enum" in schema and value not in schema["enum"]) or (
                "pattern" in schema and not re.fullmatch(schema["pattern"], value)) or (
                schema.get("format") == "int64" and not value.isdigit()):
            out.append(f"{where}: {value!r} is not a valid {schema.get('format', 'string')}")
    elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        out.append(f"{where}: {value!r} is not an integer")
    elif kind == "boolean" and not isinstance(value, bool):
        out.append(f"{where}: {value!r} is not a boolean")
    return out


def _gce_request(monkeypatch, tmp_path, machine: Machine, spot: bool = False) -> dict:
    from researchkit_py.clouds.gce.provider import GCEProvider

    monkeypatch.setenv("GCE_PROJECT", "my-project")
    provider = GCEProvider(Settings(tmp_path))
    req = InstanceRequest("rk-x", "x-20261123-000000-abcdabcd", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"},
                          7200, machine.machine_type, spot, machine.gpu_count, machine.accelerator, machine.attach)
    return provider.request_body(req)


@pytest.mark.parametrize("shape", GCE.gpus, ids=lambda s: f"{s.count}x{s.gpu}")
def test_every_gce_gpu_body_matches_the_discovery_document(monkeypatch, tmp_path, shape):
    doc = _discovery()
    machine = Machine(shape.machine_type, shape.gpu, shape.count, shape.accelerator, shape.attach)
    request = _gce_request(monkeypatch, tmp_path, machine, spot=shape.spot_only)
    insert = doc["resources"]["instances"]["methods"]["insert"]
    assert insert["request"]["$ref"] == "Instance"
    for param in ("project", "zone"):
        assert re.fullmatch(insert["parameters"][param]["pattern"], request[param])
    body = request["instanceResource"]
    assert schema_problems(body, {"$ref": "Instance"}, doc) == []
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE" and body["scheduling"]["automaticRestart"] is False
    assert body["disks"][0]["initializeParams"]["sourceImage"] == \
        "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
    assert {"key": "install-nvidia-driver", "value": "True"} in body["metadata"]["items"]
    accelerators = body.get("guestAccelerators", [])
    assert accelerators == ([{"acceleratorCount": shape.count, "acceleratorType":
                              f"projects/my-project/zones/us-central1-a/acceleratorTypes/{shape.accelerator}"}]
                            if shape.attach else [])
    assert body["scheduling"].get("provisioningModel") == ("SPOT" if shape.spot_only else None)


def test_cpu_and_spot_bodies_match_too_and_spot_only_shapes_say_so(monkeypatch, tmp_path):
    doc = _discovery()
    cpu = _gce_request(monkeypatch, tmp_path, Machine("n2-standard-4"))["instanceResource"]
    assert schema_problems(cpu, {"$ref": "Instance"}, doc) == [] and "onHostMaintenance" not in cpu["scheduling"]
    assert cpu["disks"][0]["initializeParams"]["sourceImage"].endswith("ubuntu-os-cloud/global/images/family/ubuntu-2204-lts")
    spot = _gce_request(monkeypatch, tmp_path, Machine("n2-standard-4"), spot=True)["instanceResource"]["scheduling"]
    assert (spot["provisioningModel"], spot["onHostMaintenance"], spot["automaticRestart"]) == ("SPOT", "TERMINATE", False)
    with pytest.raises(KitError, match="a3-highgpu-1g is offered only as spot capacity on GCE; pass --spot"):
        _gce_request(monkeypatch, tmp_path, Machine("a3-highgpu-1g", "H100", 1, "nvidia-h100-80gb"))


def test_the_discovery_check_can_fail():
    doc = _discovery()
    bad = {"name": "x", "scheduling": {"onHostMaintenance": "LIVE", "automaticRestart": "no"},
           "guestAccelerators": [{"acceleratorCount": "1", "type": "nvidia-l4"}], "metadata": {"items": [{"key": "a b"}]}}
    problems = "\n".join(schema_problems(bad, {"$ref": "Instance"}, doc))
    for what in ("onHostMaintenance: 'LIVE'", "automaticRestart: 'no'", "acceleratorCount: '1'",
                 "guestAccelerators[0].type: not in the schema", "key: 'a b'", "items[0].value: required"):
        assert what in problems


def _ec2_attempts(monkeypatch, tmp_path, machine: Machine, spot: bool) -> list[dict]:
    from researchkit_py.clouds.ec2.provider import EC2Provider

    for k, v in {"EC2_INSTANCE_PROFILE": "researchkit-vm", "EC2_AMI": "ami-0123456789abcdef0",
                 "EC2_GPU_AMI": "ami-0fedcba9876543210", "EC2_SUBNETS": "subnet-0a,subnet-0b"}.items():
        monkeypatch.setenv(k, v)
    provider = EC2Provider(Settings(tmp_path))
    req = InstanceRequest("rk-x", "x-20261123-000000-abcdabcd", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"},
                          7200, machine.machine_type, spot, machine.gpu_count)
    user_data = base64.b64encode(provider.user_data(req.startup_script)).decode()
    return [{**a, "UserData": user_data} for a in provider._attempts(req, provider.subnets)]


@pytest.mark.parametrize("shape", EC2.gpus, ids=lambda s: f"{s.count}x{s.gpu}")
def test_every_ec2_gpu_launch_validates_against_botocores_model(monkeypatch, tmp_path, shape):
    from botocore.session import get_session
    from botocore.validate import validate_parameters

    run_instances = get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    attempts = _ec2_attempts(monkeypatch, tmp_path, Machine(shape.machine_type, shape.gpu, shape.count), spot=True)
    for params in attempts:
        validate_parameters(params, run_instances)  # raises ParamValidationError
        assert (params["InstanceType"], params["ImageId"]) == (shape.machine_type, "ami-0fedcba9876543210")
    assert [("InstanceMarketOptions" in a, a["SubnetId"]) for a in attempts] == [
        (True, "subnet-0a"), (False, "subnet-0a"), (True, "subnet-0b"), (False, "subnet-0b")]
    with pytest.raises(Exception, match="Invalid type for parameter MinCount"):
        validate_parameters({**attempts[0], "MinCount": "1"}, run_instances)


# --- the protocol and READ ------------------------------------------------------------------------------
def test_gpu_unavailable_is_the_cause_of_a_failed_gpu_check():
    status = protocol.final_status(protocol.SETUP, None, protocol.GPU_UNAVAILABLE)
    assert (status["phase"], status["cause"]) == (protocol.FAILED, protocol.GPU_UNAVAILABLE)
    assert protocol.final_status(protocol.SETUP, None, "")["cause"] == protocol.BOOT_ERROR
    assert protocol.final_status(protocol.SETUP, None, protocol.TERMINATED)["cause"] == protocol.TERMINATED  # a signal wins
    assert protocol.client_exit_code(status) == protocol.EXIT_INFRA


def test_read_prints_the_gpu_the_run_had(tmp_path):
    from researchkit_py.experiment import runrecord
    from researchkit_py.experiment.records import write_analysis
    from researchkit_py.experiment.spec import load_spec

    results = tmp_path / "results"
    results.mkdir()
    runrecord.start(results, "exp-001-gpu-speedup", "local", cloud=False)  # READ judges only the run RUN made
    (results / "metrics.json").write_text(json.dumps({"device": "cuda", "accuracy": 0.95,
                                                      "gpu": {"count": 1, "name": "NVIDIA L4", "speedup": 21.0}}))
    runrecord.finish(results, 0)
    gpu = {"ok": True, "devices": ["NVIDIA L4"], "driver": "580.65.06", "cuda": "12.9", "torch": "2.5.1",
           "torch_cuda": "12.4"}
    (results / ".cloud-run-state.json").write_text(json.dumps({"run_id": "r", "files": {},
                                                               "status": {"phase": "DONE", "gpu": gpu}}))
    assert write_analysis(load_spec(EXAMPLE), results) == "CONFIRMED"
    assert "GPU: 1 × NVIDIA L4, NVIDIA driver 580.65.06, CUDA 12.9; torch 2.5.1 with CUDA 12.4.\n" in \
        (results / "analysis.md").read_text()


def test_the_startup_script_checks_the_gpu_before_the_command(tmp_path):
    from test_startup import plan, shellcheck

    from researchkit_py.startup import render_startup_script

    script = render_startup_script(plan(provider="gce", store_url="gs://b/p", gpu="L4:2", gpu_wait_seconds=30))
    shellcheck(script, tmp_path)
    check = 'RK_CAUSE=gpu_unavailable; rk gpu-check "$PWD" L4:2 30; RK_CAUSE=""'
    assert script.index(check) < script.index("RK_STAGE=RUN")
    assert check not in render_startup_script(plan(provider="gce", store_url="gs://b/p"))


def test_the_check_travels_beside_the_agent_not_in_ec2s_user_data(tmp_path):
    """EC2 caps user data at 16 KB: the check travels in the rest of the agent, from the bucket."""
    from test_startup import plan

    from researchkit_py.clouds.ec2.provider import USER_DATA_LIMIT
    from researchkit_py.startup import render_startup_script
    from researchkit_py.vm_payload import vm_agent

    script = render_startup_script(plan(provider="ec2", store_url="s3://b/p", gpu="H100:8"))
    assert len(gzip.compress(script.encode(), 9)) < USER_DATA_LIMIT
    agent = vm_agent("ec2", "s3://b/p")
    assert "gpu_check.py" not in agent.core and "gpu_check.py" in agent.rest


def test_a_machine_without_the_gpu_asked_for_fails_before_the_command(tmp_path, project, monkeypatch):
    """On the embedded provider with --gpu: a driver that finds no device ends the run FAILED
    (gpu_unavailable) before its command, with what nvidia-smi said in the log and the status."""
    from fake_gpu import nvidia_smi

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(nvidia_smi("no-device"))
    (bin_dir / "nvidia-smi").chmod(0o755)
    bucket = tmp_path / "bucket"
    env = {**os.environ, "RK_BUCKET": str(bucket), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run([str(REPO / "tools" / "cloud-run"), "run", 'touch "$RESULTS_DIR/ran"', "--gpu", "L4",
                        "--output-dir", str(tmp_path / "out"), "--quiet"], env=env, capture_output=True, text=True,
                       cwd=project, timeout=120)
    assert r.returncode == protocol.EXIT_INFRA, r.stderr
    run_id = (tmp_path / "out" / ".cloud-run-id").read_text().strip()
    manifest = json.loads((bucket / protocol.run_key(run_id, protocol.MANIFEST)).read_text())
    assert (manifest["gpu"], manifest["gpu_count"]) == ("L4", 1)
    status = json.loads((tmp_path / "out" / ".cloud-run-state.json").read_text())["status"]
    assert (status["phase"], status["cause"], status["gpu"]["nvidia_smi"]) == (
        "FAILED", "gpu_unavailable", "No devices were found")
    log = (tmp_path / "out" / ".cloud-run.log").read_text()
    assert "researchkit: GPU unavailable: nvidia-smi failed (exit 6): No devices were found" in log
    assert not (tmp_path / "out" / "ran").exists() and "researchkit: running:" not in log
