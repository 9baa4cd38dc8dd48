"""Amazon EC2 provider (boto3, imported on first use).

User data is our startup script, gzip-compressed (cloud-init decompresses it; EC2 caps
user data at 16 KB). Its first action schedules `shutdown -h +N`; the instance's
InstanceInitiatedShutdownBehavior is terminate, so the EXIT trap's `shutdown -h now`
deletes it without any credential on the VM. Access to the bucket comes from the IAM
instance profile; no key pair, no inbound rule.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from contextlib import contextmanager

from ..aws import aws_client, error_code, no_credentials_is_kit_error
from ..errors import CapacityError, KitError, ProviderError
from .base import TOOL_LABEL, Instance, InstanceRequest, Provider

USER_DATA_LIMIT = 16 * 1024
DEFAULT_AMI_PARAM = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InstanceLimitExceeded", "InsufficientCapacity",
                  "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported", "InsufficientFreeAddressesInSubnet")
ALIVE = ("pending", "running")


def ec2_client(service: str = "ec2"):
    return aws_client(service)


class EC2Provider(Provider):
    name = "ec2"

    def __init__(self, settings):
        super().__init__(settings)
        self.instance_type = settings.get("EC2_INSTANCE_TYPE") or "c6i.xlarge"
        self.ami = settings.get("EC2_AMI") or ""
        self.ami_param = settings.get("EC2_AMI_PARAM") or DEFAULT_AMI_PARAM
        self.profile = settings.get("EC2_INSTANCE_PROFILE") or ""
        self.subnets = [s.strip() for s in (settings.get("EC2_SUBNETS") or "").split(",") if s.strip()]
        self.security_group = settings.get("EC2_SECURITY_GROUP") or ""
        self.spot = (settings.get("EC2_SPOT") or "").lower() in ("1", "true", "yes")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = ec2_client()
        return self._client

    def default_store_url(self) -> str:
        raise KitError("no bucket for EC2 runs: set RK_BUCKET=s3://BUCKET/PREFIX in .orchestration-kit.env")

    def default_machine_type(self) -> str:
        return self.instance_type

    def deadline_lines(self, max_seconds: int) -> str:
        minutes = max(1, math.ceil(max_seconds / 60))
        return f"shutdown -h +{minutes} 'researchkit: hard deadline' || true  # terminates: shutdown behaviour"

    def self_delete_lines(self) -> str:
        return "shutdown -h now"

    def user_data(self, script: str) -> bytes:
        data = gzip.compress(script.encode(), compresslevel=9, mtime=0)
        if len(data) > USER_DATA_LIMIT:
            raise KitError(f"the startup script is {len(data)} bytes compressed, over EC2's 16 KB user data limit; "
                           "shorten the command or move --env values into a file in the project")
        return data

    def resolve_ami(self) -> str:
        if self.ami:
            return self.ami
        with _translate(f"read SSM parameter {self.ami_param}"):
            return ec2_client("ssm").get_parameter(Name=self.ami_param)["Parameter"]["Value"]

    def create(self, req: InstanceRequest) -> Instance:
        user_data = self.user_data(req.startup_script)  # refused before any call to AWS
        if not self.profile:
            raise KitError("no instance profile: set EC2_INSTANCE_PROFILE to a profile whose role may use the bucket")
        base = {
            "ImageId": self.resolve_ami(), "InstanceType": req.machine_type or self.instance_type,
            "MinCount": 1, "MaxCount": 1, "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "IamInstanceProfile": {"Name": self.profile},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": req.name}] +
                                   [{"Key": k, "Value": v} for k, v in sorted(req.labels.items())]}],
        }
        if self.security_group:
            base["SecurityGroupIds"] = [self.security_group]
        spot = req.spot or self.spot
        attempts = [(subnet, market) for subnet in (self.subnets or [None])
                    for market in (["spot", "on-demand"] if spot else ["on-demand"])]
        tried = []
        for n, (subnet, market) in enumerate(attempts):
            params = dict(base, ClientToken=f"{req.run_id}-{n}"[:64])
            if subnet:
                params["SubnetId"] = subnet
            if market == "spot":
                params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                    "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
            try:
                with _translate(f"launch {req.name}"):
                    reply = self.client.run_instances(**params)
            except CapacityError as e:
                tried.append(f"{subnet or 'default subnet'}/{market}: {e}")
                self._terminate_named(req.name)  # nothing half-launched may linger
                continue
            inst = reply["Instances"][0]
            return Instance(req.name, "PROVISIONING", req.labels, inst.get("Placement", {}).get("AvailabilityZone", ""))
        raise CapacityError(f"no capacity for {base['InstanceType']}: {'; '.join(tried)}; add subnets to EC2_SUBNETS "
                            "or choose another instance type")

    def _describe(self, name: str | None = None) -> list[dict]:
        filters = [{"Name": f"tag:{TOOL_LABEL[0]}", "Values": [TOOL_LABEL[1]]},
                   {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
        if name:
            filters.append({"Name": "tag:Name", "Values": [name]})
        out = []
        with _translate("list instances"):
            for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    out.extend(reservation["Instances"])
        return out

    def list(self) -> list[Instance]:
        result = []
        for i in self._describe():
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            state = "RUNNING" if i["State"]["Name"] in ALIVE else "TERMINATED"
            result.append(Instance(tags.get("Name", i["InstanceId"]), state,
                                   {k: v for k, v in tags.items() if k != "Name"},
                                   i.get("Placement", {}).get("AvailabilityZone", "")))
        return result

    def get(self, name: str) -> Instance | None:
        return next((i for i in self.list() if i.name == name), None)

    def delete(self, name: str) -> None:
        self._terminate_named(name)

    def _terminate_named(self, name: str) -> None:
        ids = [i["InstanceId"] for i in self._describe(name)]
        if ids:
            with _translate(f"terminate {name}"):
                self.client.terminate_instances(InstanceIds=ids)


@contextmanager
def _translate(what: str) -> Iterator[None]:
    from botocore import exceptions

    with no_credentials_is_kit_error():
        try:
            yield
        except exceptions.ClientError as e:
            code, message = error_code(e), e.response.get("Error", {}).get("Message", "")
            if code in CAPACITY_CODES:
                raise CapacityError(code) from e
            if code in ("UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId"):
                raise ProviderError(f"cannot {what}: {code}; check your AWS credentials and IAM permissions") from e
            raise ProviderError(f"cannot {what}: {code} {message[:160]}".rstrip()) from e
        except exceptions.NoCredentialsError:
            raise
        except exceptions.BotoCoreError as e:  # unreachable, timed out, or an answer that is not EC2's
            raise ProviderError(f"cannot {what}: {e.__class__.__name__}: {' '.join(str(e).split())[:160]}") from e
