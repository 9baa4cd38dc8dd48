"""EC2: boto3 against moto (EC2, SSM, S3), and fake VMs booted from the user data by a
poller (moto runs none), powered off by the script and terminated because the instance's
shutdown behaviour says so."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import time
from pathlib import Path

from emulators import FAKE_SECRET
from toy import assert_cycle_synced_and_confirmed, run_toy_cycle

from researchkit_py import protocol

REPO = Path(__file__).resolve().parents[2]


def cloud_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", "ec2", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=180)


def instances(vms) -> list[dict]:
    pages = vms.ec2.describe_instances()
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def test_launch_request_shape_and_no_secrets(ec2):
    r = cloud_run("run", "sleep 30", "--detach", "--spec", "experiments/exp-007-big.md")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    (inst,) = instances(ec2)
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["Name"] == f"rk-{run_id}" and tags["researchkit-tool"] == "researchkit"
    assert tags["researchkit-run"] == run_id and tags["researchkit-exp"] == "exp-007-big"
    assert int(tags["researchkit-expires"]) > time.time()
    assert inst["ImageId"] == ec2.ami and inst["InstanceType"] == "c6i.xlarge"
    assert inst["IamInstanceProfile"]["Arn"].endswith("/researchkit-vm")
    assert "KeyName" not in inst and inst["ClientToken"] == f"{run_id}-0"
    attr = ec2.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    raw = base64.b64decode(ec2.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")["UserData"]["Value"])
    assert len(raw) <= 16 * 1024 and raw[:2] == b"\x1f\x8b"
    script = gzip.decompress(raw).decode()
    code = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert code[0] == "set -euo pipefail" and code[1].startswith("shutdown -h +240 ")
    for secret in (FAKE_SECRET, "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key"):
        assert secret not in script and secret not in json.dumps(tags)
    assert cloud_run("terminate", run_id).returncode == 0
    ec2.wait_all_gone()


def test_oversized_user_data_is_refused_before_calling_aws(ec2):
    big = base64.b64encode(os.urandom(15000)).decode()  # incompressible
    r = cloud_run("run", f"echo {big}")
    assert r.returncode == 1
    assert "over EC2's 16 KB user data limit" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert instances(ec2) == []


def test_no_instance_profile_or_bucket_names_the_setting(ec2, monkeypatch):
    monkeypatch.delenv("EC2_INSTANCE_PROFILE")
    r = cloud_run("run", "true")
    assert r.returncode == 1 and "set EC2_INSTANCE_PROFILE" in r.stderr
    monkeypatch.delenv("RK_BUCKET")
    r = cloud_run("ls")
    assert r.returncode == 1 and "set RK_BUCKET=s3://" in r.stderr
    assert instances(ec2) == []


def test_spot_falls_back_to_on_demand_and_to_the_next_subnet(ec2, monkeypatch):
    from botocore.exceptions import ClientError

    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.ec2.provider import EC2Provider
    from researchkit_py.settings import Settings

    vpc = ec2.ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.50.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    monkeypatch.setenv("EC2_SUBNETS", ",".join(subnets))
    provider = EC2Provider(Settings())
    real, calls = provider.client.run_instances, []

    def capacity_limited(**kw):
        market = "spot" if "InstanceMarketOptions" in kw else "on-demand"
        calls.append((kw.get("SubnetId"), market, kw["ClientToken"]))
        if kw.get("SubnetId") == subnets[0] or market == "spot":
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none left"}}, "RunInstances")
        return real(**kw)

    monkeypatch.setattr(provider.client, "run_instances", capacity_limited)
    ec2._stop.set()  # no VM needed here
    inst = provider.create(InstanceRequest("rk-spot", "spot-run", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"},
                                           600, spot=True))
    assert [(s, m) for s, m, _ in calls] == [(subnets[0], "spot"), (subnets[0], "on-demand"), (subnets[1], "spot"),
                                             (subnets[1], "on-demand")]
    assert len({t for _, _, t in calls}) == 4  # one idempotency token per attempt
    assert inst.name == "rk-spot" and [i["SubnetId"] for i in instances(ec2)] == [subnets[1]]


def test_run_on_a_fake_vm_terminates_itself_and_results_come_back(ec2, tmp_path):
    cmd = 'mkdir -p "$RESULTS_DIR"; echo "{\\"loss\\": 0.1}" > "$RESULTS_DIR/metrics.json"; exit 3'
    r = cloud_run("run", cmd, "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 3, r.stderr + ec2.consoles()
    run_id = (tmp_path / "out" / ".cloud-run-id").read_text().strip()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"loss": 0.1}
    ec2.wait_all_gone()
    assert ec2.terminated_by_shutdown == [f"rk-{run_id}"]  # the trap's shutdown, with behaviour terminate
    (inst,) = instances(ec2)
    assert inst["State"]["Name"] == "terminated"
    meta_log = (ec2.vms[f"rk-{run_id}"]["root"] / "metadata.log").read_text()
    assert "meta-data/iam/security-credentials/researchkit-vm" in meta_log  # credentials came from the role
    status = json.loads(cloud_run("status", run_id, "--json").stdout)
    assert (status["phase"], status["exit_code"], status["cause"]) == ("FAILED", 3, "exit")
    assert "researchkit: FAILED" in cloud_run("logs", run_id).stdout
    from researchkit_py.clouds.registry import open_store

    logs = [o.key for o in open_store(os.environ["RK_BUCKET"]).list(protocol.run_key(run_id, "logs/"))]
    assert logs == [protocol.run_key(run_id, protocol.LOG)]  # one object: its chunks (S3, under 5 MiB) are gone


def test_terminate_and_reap_on_ec2(ec2):
    run_id = cloud_run("run", "sleep 120", "--detach").stdout.strip()
    deadline = time.time() + 30
    while json.loads(cloud_run("status", run_id, "--json").stdout)["phase"] != "RUN" and time.time() < deadline:
        time.sleep(0.3)
    listing = json.loads(cloud_run("ls", "--json").stdout)
    assert [row["phase"] for row in listing] == ["RUN"]
    assert cloud_run("terminate", run_id).returncode == 0
    ec2.wait_all_gone()
    assert json.loads(cloud_run("status", run_id, "--json").stdout)["phase"] == "FAILED"
    # an instance past its deadline is reaped by the next invocation
    second = cloud_run("run", "sleep 120", "--detach").stdout.strip()
    (inst,) = [i for i in instances(ec2) if i["State"]["Name"] in ("pending", "running")]
    ec2.ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": "researchkit-expires", "Value": "1"}])
    r = cloud_run("reap")
    assert r.stdout.strip() == f"deleted rk-{second}"
    ec2.wait_all_gone()


def test_experiment_cycle_with_compute_target_ec2(ec2, tmp_path):
    _, r = run_toy_cycle(tmp_path, "ec2")
    assert_cycle_synced_and_confirmed(r, "ec2")
    ec2.wait_all_gone()
    (inst,) = instances(ec2)
    assert inst["State"]["Name"] == "terminated"
    raw = base64.b64decode(ec2.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")["UserData"]["Value"])
    assert FAKE_SECRET not in gzip.decompress(raw).decode()
