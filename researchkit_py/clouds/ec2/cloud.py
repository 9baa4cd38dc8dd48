"""Amazon EC2's descriptor (see clouds/base.py: Cloud)."""

from ..base import Cloud, Shapes, gpu_shapes

CLOUD = Cloud(
    name="ec2", title="EC2", where="on EC2",
    provider="researchkit_py.clouds.ec2.provider:EC2Provider",
    store="researchkit_py.clouds.ec2.store:S3Store", scheme="s3",
    vm_modules=("clouds/http.py", "clouds/ec2/vm.py"), vm_bucket="researchkit_py.clouds.ec2.vm:VMBucket",
    vm_store="researchkit_py.clouds.ec2.rest:S3RestStore", vm_store_modules=("clouds/ec2/rest.py",),
    store_modules=("clouds/http.py", "clouds/ec2/vm.py", "clouds/ec2/rest.py", "clouds/ec2/store.py", "clouds/ec2/aws.py"),
    # On-demand USD per hour in us-east-1, Linux (CPU types as listed on 2026-11-01; GPU types
    # taken on 2026-11-23 from aws.amazon.com/ec2/pricing/on-demand as tabulated by
    # instances.vantage.sh, P4d and P5 after AWS's June 2025 price reduction). Approximate: for
    # comparing and capping; RK_PRICE_PER_HOUR overrides.
    prices={"c6i.xlarge": 0.17, "c6i.4xlarge": 0.68, "c6i.16xlarge": 2.72, "r6i.4xlarge": 1.01,
            "r6i.16xlarge": 4.03,
            "g4dn.xlarge": 0.526, "g4dn.12xlarge": 3.912,
            "g5.xlarge": 1.006, "g5.12xlarge": 5.672, "g5.48xlarge": 16.288,
            "g6.xlarge": 0.8048, "g6.12xlarge": 4.6016, "g6.48xlarge": 13.3504,
            "p4d.24xlarge": 21.96, "p5.48xlarge": 55.04},
    shapes=Shapes("c6i.xlarge", "c6i.16xlarge", "r6i.16xlarge", gpu="L4"),
    machine_setting="EC2_INSTANCE_TYPE",
    gpus=(
        *gpu_shapes("L4", {1: "g6.xlarge", 4: "g6.12xlarge", 8: "g6.48xlarge"}),
        *gpu_shapes("A10G", {1: "g5.xlarge", 4: "g5.12xlarge", 8: "g5.48xlarge"}),
        *gpu_shapes("T4", {1: "g4dn.xlarge", 4: "g4dn.12xlarge"}),
        *gpu_shapes("A100", {8: "p4d.24xlarge"}),
        *gpu_shapes("H100", {8: "p5.48xlarge"}),
    ),
    gpu_machine_types=r"(g\d+[a-z]*|gr\d+|p\d+[a-z]*)\.",
    defaults={
        "EC2_INSTANCE_TYPE": "c6i.xlarge",
        "EC2_AMI": "",
        "EC2_AMI_PARAM": "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
        "EC2_GPU_AMI": "",
        "EC2_GPU_AMI_PARAM": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
        "EC2_INSTANCE_PROFILE": "",
        "EC2_SUBNETS": "",
        "EC2_SECURITY_GROUP": "",
        "EC2_SPOT": "",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "",
        "AWS_ENDPOINT_URL": "",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "",
    },
)
