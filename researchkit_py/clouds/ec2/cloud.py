"""Amazon EC2's descriptor (see clouds/base.py: Cloud)."""

from ..base import Cloud, Shapes

CLOUD = Cloud(
    name="ec2", title="EC2", where="on EC2",
    provider="researchkit_py.clouds.ec2.provider:EC2Provider",
    store="researchkit_py.clouds.ec2.store:S3Store", scheme="s3",
    vm_modules=("clouds/http.py", "clouds/ec2/vm.py"), vm_bucket="researchkit_py.clouds.ec2.vm:VMBucket",
    vm_store="researchkit_py.clouds.ec2.rest:S3RestStore", vm_store_modules=("clouds/ec2/rest.py",),
    store_modules=("clouds/ec2/store.py", "clouds/ec2/aws.py"),
    # on-demand USD per hour, us-east-1, as listed on 2026-11-01
    prices={"c6i.xlarge": 0.17, "c6i.4xlarge": 0.68, "c6i.16xlarge": 2.72, "r6i.4xlarge": 1.01,
            "r6i.16xlarge": 4.03, "g5.xlarge": 1.01, "g5.12xlarge": 5.67, "p4d.24xlarge": 32.77},
    shapes=Shapes("c6i.xlarge", "c6i.16xlarge", "r6i.16xlarge", "g5.xlarge", "p4d.24xlarge"),
    defaults={
        "EC2_INSTANCE_TYPE": "c6i.xlarge",
        "EC2_AMI": "",
        "EC2_AMI_PARAM": "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
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
