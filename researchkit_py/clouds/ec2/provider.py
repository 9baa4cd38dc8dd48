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
from .capacity import CAPACITY_CODES, quota_line, suggested_zones
from .cloud import CLOUD

USER_DATA_LIMIT = 16 * 1024
ALIVE = ("pending", "running")


class EC2Provider(Provider):
    name = "ec2"

    def __init__(self, settings):
        super().__init__(settings)
        self.instance_type = settings.text("EC2_INSTANCE_TYPE", CLOUD.defaults["EC2_INSTANCE_TYPE"])
        self.ami = settings.text("EC2_AMI")
        self.ami_param = settings.text("EC2_AMI_PARAM", CLOUD.defaults["EC2_AMI_PARAM"])
        self.gpu_ami = settings.text("EC2_GPU_AMI")  # a GPU VM's image: with the NVIDIA driver
        self.gpu_ami_param = settings.text("EC2_GPU_AMI_PARAM", CLOUD.defaults["EC2_GPU_AMI_PARAM"])
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

    def check(self, req: InstanceRequest) -> None:
        self.user_data(req.startup_script)

    def resolve_ami(self, gpu: bool = False) -> str:
        ami, param = (self.gpu_ami, self.gpu_ami_param) if gpu else (self.ami, self.ami_param)
        if ami:
            return ami
        with _translate(f"read SSM parameter {param}"):
            return aws_client("ssm", self.settings).get_parameter(Name=param)["Parameter"]["Value"]

    def image(self, req: InstanceRequest) -> str:
        gpu = bool(req.gpu_count)
        ami, param = (self.gpu_ami, self.gpu_ami_param) if gpu else (self.ami, self.ami_param)
        source = ("EC2_GPU_AMI" if gpu else "EC2_AMI") if ami else f"the SSM parameter {param}"
        return f"{self.resolve_ami(gpu)} ({source})"

    def create(self, req: InstanceRequest) -> Instance:
        user_data = self.user_data(req.startup_script)  # refused before any call to AWS
        itype, tried = req.machine_type or self.instance_type, []
        subnets = self._subnets_offering(itype) if req.gpu_count and self.subnets else self.subnets
        attempts, region = self._attempts(req, subnets), self.client.meta.region_name
        for params in attempts:  # grows while EC2 names zones with capacity for the default VPC
            spot = "InstanceMarketOptions" in params
            where = params.get("SubnetId") or params.get("Placement", {}).get("AvailabilityZone", "default subnet")
            try:
                with _translate(f"launch {req.name}"):
                    reply = self.client.run_instances(UserData=user_data, **params)
            except CapacityError as e:
                code, message = str(e), e.__cause__.response.get("Error", {}).get("Message", "")  # type: ignore[union-attr]
                tried.append(f"{where}/{'spot' if spot else 'on-demand'}: {code}")
                self._terminate_named(req.name)  # nothing half-launched may linger
                if code == "VcpuLimitExceeded" and not spot:  # the account's quota: no other zone helps
                    raise CapacityError(quota_line(itype, False, region)) from e
                placed = {a.get("Placement", {}).get("AvailabilityZone") for a in attempts}
                if not self.subnets:
                    for zone in (z for z in suggested_zones(message) if z not in placed):
                        attempts += self._attempts(req, [], zone=zone, first=len(attempts))
                continue
            inst = reply["Instances"][0]
            return Instance(req.name, "PROVISIONING", req.labels, inst.get("Placement", {}).get("AvailabilityZone", ""))
        raise CapacityError(f"no capacity for {itype}: {'; '.join(tried)}; add subnets in other zones to EC2_SUBNETS "
                            "or choose another instance type")

    def _subnets_offering(self, itype: str) -> list[str]:
        """The subnets of EC2_SUBNETS whose zone offers the instance type (all, where that cannot be read)."""
        try:
            with _translate(f"find the zones that offer {itype}"):
                zones = {s["SubnetId"]: s["AvailabilityZone"]
                         for s in self.client.describe_subnets(SubnetIds=self.subnets)["Subnets"]}
                offers = self.client.describe_instance_type_offerings(
                    LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [itype]}])
        except ProviderError:
            return self.subnets
        offered = sorted({o["Location"] for o in offers["InstanceTypeOfferings"]})
        kept = [s for s in self.subnets if zones.get(s) in offered]
        if not kept:
            raise CapacityError(f"{itype} is offered in none of the zones of EC2_SUBNETS "
                                f"({', '.join(sorted(set(zones.values())))}); it is in {', '.join(offered)}: add subnets there")
        return kept

    def request_body(self, req: InstanceRequest) -> dict:
        """The first RunInstances call create() would make, the user data summarised."""
        size = len(self.user_data(req.startup_script))
        return {**self._attempts(req, self.subnets)[0], "UserData": f"<the startup script, {size} bytes gzip-compressed>"}

    def _attempts(self, req: InstanceRequest, subnets: list[str], zone: str = "", first: int = 0) -> list[dict]:
        """RunInstances parameters, one set per attempt: for each of `subnets` (else the default
        VPC's, in `zone` when given), spot (when asked) then on-demand; each with its own
        ClientToken, so a retried call is deduplicated by EC2 while a fallback is a new request."""
        if not self.profile:
            raise KitError("no instance profile: set EC2_INSTANCE_PROFILE to a profile whose role may use the bucket")
        base = {
            "ImageId": self.resolve_ami(bool(req.gpu_count)), "InstanceType": req.machine_type or self.instance_type,
            "MinCount": 1, "MaxCount": 1,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "IamInstanceProfile": {"Name": self.profile},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": req.name}] +
                                   [{"Key": k, "Value": v} for k, v in sorted(req.labels.items())]}],
        }
        if self.security_group:
            base["SecurityGroupIds"] = [self.security_group]
        if zone:
            base["Placement"] = {"AvailabilityZone": zone}
        attempts: list[dict] = []
        for subnet in subnets or [None]:
            for market in ("spot", "on-demand") if req.spot or self.spot else ("on-demand",):
                params = dict(base, ClientToken=f"{req.run_id}-{first + len(attempts)}"[:64])
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
            if code in CAPACITY_CODES:  # the next subnet, zone or market may have room (see capacity.py)
                raise CapacityError(code) from e
            if code in ("UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId"):
                raise ProviderError(f"cannot {what}: {code}; check your AWS credentials and IAM permissions") from e
            raise ProviderError(f"cannot {what}: {code} {message[:160]}".rstrip()) from e
        except exceptions.NoCredentialsError:
            raise
        except exceptions.BotoCoreError as e:  # unreachable, timed out, or an answer that is not EC2's
            raise ProviderError(f"cannot {what}: {e.__class__.__name__}: {' '.join(str(e).split())[:160]}") from e
