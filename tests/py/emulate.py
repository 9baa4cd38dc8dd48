"""Run a cloud look-alike on this machine and print the environment that points researchkit
at it; serve until Ctrl-C, then clean up.

  gce: fake-gcs-server, our fake Compute API, fake VMs booted from the startup scripts
  ec2: moto (EC2, SSM, IAM, S3) and fake VMs a poller boots from the user data

Fake VMs get their own network namespace when run as root with bwrap and ip, else they are
plain processes.

  .venv/bin/python tests/py/emulate.py gce|ec2
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulators import FakeGCS, Moto, ubuntu_amis  # noqa: E402
from fake_gce import FakeGCE  # noqa: E402
from fake_vm import EC2VMs, GCEVMs, VMNetwork  # noqa: E402


def start_gce(host: str, net, root: Path, image=None):
    gcs, gce = FakeGCS(host=host), FakeGCE(host=host)
    vms = GCEVMs(gce, root, {"STORAGE_EMULATOR_HOST": gcs.url}, net, image)
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    from researchkit_py.clouds.gce.store import gcs_client

    bucket = f"emu-{uuid.uuid4().hex[:8]}"
    gcs_client().create_bucket(bucket)
    exports = {"COMPUTE_TARGET": "gce", "STORAGE_EMULATOR_HOST": gcs.url, "RK_GCE_API_ENDPOINT": gce.url, "GCE_PROJECT": "emu-project",
               "RK_BUCKET": f"gs://{bucket}/researchkit"}
    return exports, vms, [vms.stop, gce.stop, gcs.stop]


def prepare_ec2(moto_url: str) -> dict[str, str]:
    """A bucket, an AMI parameter and an instance profile in moto; the settings that use them
    (also set in this process)."""
    aws = {"AWS_ENDPOINT_URL": moto_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "emulator",
           "AWS_SECRET_ACCESS_KEY": "emulator"}
    os.environ.update(aws)
    from researchkit_py.clouds.ec2.aws import aws_client

    bucket = f"emu-{uuid.uuid4().hex[:8]}"
    aws_client("s3").create_bucket(Bucket=bucket)
    ami = ubuntu_amis(aws_client("ec2"))[0]
    aws_client("ssm").put_parameter(Name="/researchkit/emulator/ami", Value=ami, Type="String")
    aws_client("iam").create_instance_profile(InstanceProfileName="researchkit-vm")
    return {**aws, "COMPUTE_TARGET": "ec2", "RK_BUCKET": f"s3://{bucket}/researchkit", "EC2_INSTANCE_PROFILE": "researchkit-vm",
            "EC2_AMI_PARAM": "/researchkit/emulator/ami"}


def start_ec2(host: str, net, root: Path, image=None):
    moto = Moto(host=host)
    exports = prepare_ec2(moto.url)
    from researchkit_py.clouds.ec2.aws import aws_client

    vms = EC2VMs(aws_client("ec2"), root, {"AWS_ENDPOINT_URL": moto.url, "AWS_REGION": "us-east-1"}, net, image)
    return exports, vms, [vms.stop, moto.stop]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cloud", choices=["gce", "ec2"])
    args = ap.parse_args()
    reason = VMNetwork.available()
    net = None if reason else VMNetwork(subnet=77 if args.cloud == "gce" else 78)
    host = net.host_ip if net else "127.0.0.1"
    root = Path(tempfile.mkdtemp(prefix=f"rk-emu-{args.cloud}-"))
    exports, _, stops = (start_gce if args.cloud == "gce" else start_ec2)(host, net, root)
    print(f"# fake VMs: {'own network namespaces' if net else 'plain processes (' + reason + ')'}; consoles in {root}",
          file=sys.stderr)
    print("\n".join(f"export {k}={v}" for k, v in exports.items()), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for stop in stops:
            stop()
        if net:
            net.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
