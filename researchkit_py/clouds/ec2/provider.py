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

from ...errors import CapacityError, KitError, ProviderError
from ..base import TOOL_LABEL, Instance, InstanceRequest, Provider
from .aws import aws_client, error_code, no_credentials_is_kit_error
from .cloud import CLOUD

USER_DATA_LIMIT = 16 * 1024
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InstanceLimitExceeded", "InsufficientCapacity",
                  "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported", "InsufficientFreeAddressesInSubnet")
ALIVE = ("pending", "running")


class EC2Provider(Provider):
    name = "ec2"

    def __init__(self, settings):
        super().__init__(settings)
        self.instance_type = settings.text("EC2_INSTANCE_TYPE", CLOUD.defaults["EC2_INSTANCE_TYPE"])
        self.ami = settings.text("EC2_AMI")
        self.ami_param = settings.text("EC2_AMI_PARAM", CLOUD.defaults["EC2_AMI_PARAM"])
        self.profile = settings.text("EC2_INSTANCE_PROFILE")
        self.subnets = [s.strip() for s in settings.text("EC2_SUBNETS").split(",") if s.strip()]
        self.security_group = settings.text("EC2_SECURITY_GROUP")
        self.spot = settings.flag("EC2_SPOT")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = aws_client("ec2", self.settings)
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
            return aws_client("ssm", self.settings).get_parameter(Name=self.ami_param)["Parameter"]["Value"]

    def create(self, req: InstanceRequest) -> Instance:
        user_data = self.user_data(req.startup_script)  # refused before any call to AWS
        tried = []
        for params in self._attempts(req):
            where = f"{params.get('SubnetId', 'default subnet')}/{'spot' if 'InstanceMarketOptions' in params else 'on-demand'}"
            try:
                with _translate(f"launch {req.name}"):
                    reply = self.client.run_instances(UserData=user_data, **params)
            except CapacityError as e:
                tried.append(f"{where}: {e}")
                self._terminate_named(req.name)  # nothing half-launched may linger
                continue
            inst = reply["Instances"][0]
            return Instance(req.name, "PROVISIONING", req.labels, inst.get("Placement", {}).get("AvailabilityZone", ""))
        raise CapacityError(f"no capacity for {req.machine_type or self.instance_type}: {'; '.join(tried)}; "
                            "add subnets to EC2_SUBNETS or choose another instance type")

    def request_body(self, req: InstanceRequest) -> dict:
        """The first RunInstances call create() would make, the user data summarised."""
        size = len(self.user_data(req.startup_script))
        return {**self._attempts(req)[0], "UserData": f"<the startup script, {size} bytes gzip-compressed>"}

    def _attempts(self, req: InstanceRequest) -> list[dict]:
        """RunInstances parameters, one set per attempt: for each subnet in EC2_SUBNETS, spot
        (when asked) then on-demand; each with its own ClientToken, so a retried call is
        deduplicated by EC2 while a fallback is a new request."""
        if not self.profile:
            raise KitError("no instance profile: set EC2_INSTANCE_PROFILE to a profile whose role may use the bucket")
        base = {
            "ImageId": self.resolve_ami(), "InstanceType": req.machine_type or self.instance_type,
            "MinCount": 1, "MaxCount": 1,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "IamInstanceProfile": {"Name": self.profile},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": req.name}] +
                                   [{"Key": k, "Value": v} for k, v in sorted(req.labels.items())]}],
        }
        if self.security_group:
            base["SecurityGroupIds"] = [self.security_group]
        attempts: list[dict] = []
        for subnet in self.subnets or [None]:
            for market in ("spot", "on-demand") if req.spot or self.spot else ("on-demand",):
                params = dict(base, ClientToken=f"{req.run_id}-{len(attempts)}"[:64])
                if subnet:
                    params["SubnetId"] = subnet
                if market == "spot":
                    params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                        "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
                attempts.append(params)
        return attempts

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
