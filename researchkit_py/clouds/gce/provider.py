"""Google Compute Engine provider: the Compute REST API through one google-auth session.

The VM boots our startup script from metadata, is labelled for the reaper, carries the
cloud-enforced deadline (scheduling.maxRunDuration with instanceTerminationAction=DELETE)
and a service account limited to storage and compute scopes.

Reads (the aggregated list behind `get`, `ls`, `status` and the reaper) and writes (insert,
delete: compute.py) are REST calls: google-cloud-compute takes over 2 s to import (it loads
every Compute service's types), which no command should pay.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...errors import CapacityError, KitError, ProviderError
from ...settings import Settings
from ..base import TOOL_LABEL, Instance, InstanceRequest, Provider
from .cloud import CLOUD
from .zones import ZonePlan, refusal, request_id, translate

_DEFAULT = CLOUD.defaults

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write", "https://www.googleapis.com/auth/compute")


@dataclass
class VMConfig:
    """What an instance is made of (the VMConfig of the gcloud scripts it replaces), defaults from the settings."""

    name: str = ""
    machine_type: str = _DEFAULT["GCE_MACHINE_TYPE"]
    zone: str = _DEFAULT["GCE_ZONE"]
    image_family: str = _DEFAULT["GCE_IMAGE_FAMILY"]
    image_project: str = _DEFAULT["GCE_IMAGE_PROJECT"]
    disk_size_gb: int = int(_DEFAULT["GCE_DISK_GB"])
    gpu_count: int = 0  # a GPU VM; `attach`: attach that many `accelerator`s (N1)
    accelerator: str = ""
    attach: bool = False
    project: str = ""
    startup_script: str = ""
    service_account: str = _DEFAULT["GCE_SERVICE_ACCOUNT"]
    spot: bool = False
    max_run_seconds: int = 4 * 3600
    labels: dict[str, str] = field(default_factory=dict)
    network: str = "global/networks/default"

    @classmethod
    def from_settings(cls, settings: Settings) -> VMConfig:
        return cls(
            machine_type=settings.text("GCE_MACHINE_TYPE", cls.machine_type),
            zone=settings.text("GCE_ZONE", cls.zone),
            image_family=settings.text("GCE_IMAGE_FAMILY", cls.image_family),
            image_project=settings.text("GCE_IMAGE_PROJECT", cls.image_project),
            disk_size_gb=settings.integer("GCE_DISK_GB", cls.disk_size_gb),
            service_account=settings.text("GCE_SERVICE_ACCOUNT", cls.service_account),
            spot=settings.flag("GCE_SPOT"),
        )

    def instance_body(self, zone: str) -> dict:
        """The instance resource as the Compute Engine v1 REST API documents it (its
        discovery document's Instance schema): what --dry-run shows and the tests check.

        A GPU VM cannot live-migrate: it terminates on host maintenance (the API requires it, as
        for spot) and is not restarted, which would run the command again. install-nvidia-driver
        installs the driver on a Deep Learning VM image that lacks it."""
        scheduling: dict = {"maxRunDuration": {"seconds": str(self.max_run_seconds)}, "instanceTerminationAction": "DELETE"}
        if self.spot:
            scheduling["provisioningModel"] = "SPOT"
        if self.spot or self.gpu_count:
            scheduling.update(onHostMaintenance="TERMINATE", automaticRestart=False)
        metadata = [{"key": "startup-script", "value": self.startup_script}]
        if self.gpu_count:
            metadata.append({"key": "install-nvidia-driver", "value": "True"})
        body = {
            "name": self.name,
            "machineType": f"zones/{zone}/machineTypes/{self.machine_type}",
            "labels": self.labels,
            "metadata": {"items": metadata},
            "scheduling": scheduling,
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                "sourceImage": f"projects/{self.image_project}/global/images/family/{self.image_family}",
                "diskSizeGb": str(self.disk_size_gb)}}],
            # an external address reaches GCS and PyPI without NAT; no inbound rule is needed
            "networkInterfaces": [{"network": self.network,
                                   "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
            "serviceAccounts": [{"email": self.service_account, "scopes": list(SCOPES)}],
        }
        if self.attach:
            body["guestAccelerators"] = [{"acceleratorCount": self.gpu_count, "acceleratorType":
                                          f"projects/{self.project}/zones/{zone}/acceleratorTypes/{self.accelerator}"}]
        return body


def gcloud_config_project(settings: Settings) -> str:
    """core/project of the active gcloud configuration, read from its file (no gcloud needed)."""
    home = settings.get("HOME") or os.path.expanduser("~")
    base = Path(settings.get("CLOUDSDK_CONFIG") or Path(home) / ".config" / "gcloud")
    try:
        active = (base / "active_config").read_text().strip() or "default"
    except OSError:
        active = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(base / "configurations" / f"config_{active}")
    except configparser.Error:
        return ""
    return parser.get("core", "project", fallback="").strip()


class GCEProvider(Provider):
    name = "gce"

    def __init__(self, settings):
        super().__init__(settings)
        self.project = settings.get("GCE_PROJECT") or gcloud_config_project(settings)
        if not self.project:
            raise KitError("no GCP project: pass --project, set GCE_PROJECT in .orchestration-kit.env, "
                           "or run `gcloud config set project PROJECT_ID`")
        self.config = VMConfig.from_settings(settings)
        # a GPU VM's image (with the NVIDIA driver) and boot disk
        self.gpu_image = {"image_family": settings.text("GCE_GPU_IMAGE_FAMILY", _DEFAULT["GCE_GPU_IMAGE_FAMILY"]),
                          "image_project": settings.text("GCE_GPU_IMAGE_PROJECT", _DEFAULT["GCE_GPU_IMAGE_PROJECT"]),
                          "disk_size_gb": settings.integer("GCE_GPU_DISK_GB", int(_DEFAULT["GCE_GPU_DISK_GB"]))}
        extra = [z.strip() for z in settings.text("GCE_ZONES").split(",") if z.strip()]
        self.zones = [self.config.zone] + [z for z in extra if z != self.config.zone]
        self.endpoint = settings.text("RK_GCE_API_ENDPOINT")
        self._session = None

    @property
    def client(self):
        """The one session of this command's API calls (made before threads share it)."""
        if self._session is None:
            from .compute import session

            self._session = session(_credentials(self.endpoint))
        return self._session

    def default_store_url(self) -> str:
        return f"gs://{self.project}-researchkit"

    def default_machine_type(self) -> str:
        return self.config.machine_type

    def prepare(self, store) -> None:
        region = self.config.zone.rsplit("-", 1)[0]
        if hasattr(store, "ensure_bucket") and store.ensure_bucket(region):
            print(f"researchkit: created bucket {store.url} in {region} (uniform access, no public access)",
                  file=sys.stderr)

    def deadline_lines(self, max_seconds: int) -> str:
        return f"# deadline: scheduling.maxRunDuration={int(max_seconds)}s with instanceTerminationAction=DELETE"

    def self_delete_lines(self) -> str:
        return 'rk self-delete || shutdown -h now'

    # --- API calls -------------------------------------------------------------------
    def vm_config(self, req: InstanceRequest) -> VMConfig:
        """The configured defaults, completed by one launch's request."""
        cfg = replace(self.config, name=req.name, startup_script=req.startup_script, labels=req.labels,
                      max_run_seconds=req.max_seconds, spot=req.spot or self.config.spot,
                      machine_type=req.machine_type or self.config.machine_type, gpu_count=req.gpu_count,
                      accelerator=req.accelerator, attach=req.attach, project=self.project,
                      **(self.gpu_image if req.gpu_count else {}))
        if not cfg.spot and any(s.spot_only and s.machine_type == cfg.machine_type for s in CLOUD.gpus):
            raise KitError(f"{cfg.machine_type} is offered only as spot capacity on GCE; pass --spot (or set "
                           "GCE_SPOT=1), or ask for a shape with more GPUs")
        return cfg

    def image(self, req: InstanceRequest) -> str:
        cfg = self.vm_config(req)
        return f"projects/{cfg.image_project}/global/images/family/{cfg.image_family}"

    def request_body(self, req: InstanceRequest) -> dict:
        """The insert create() would send first: its zone and the instance resource."""
        body = self.vm_config(req).instance_body(self.zones[0])
        body["metadata"]["items"][0]["value"] = f"<the startup script, {len(req.startup_script)} bytes>"
        return {"project": self.project, "zone": self.zones[0], "instanceResource": body}

    def create(self, req: InstanceRequest) -> Instance:
        from . import compute

        cfg = self.vm_config(req)
        plan = ZonePlan(self.zones, req.accelerator, self.zones_offering(req.accelerator) if req.accelerator else None)
        for n, zone in enumerate(plan):
            try:
                with translate(f"create {req.name} in {zone}"):
                    compute.insert(self.client, self._api(), self.project, zone, cfg.instance_body(zone),
                                   request_id(req.run_id, n))
                return Instance(req.name, "PROVISIONING", req.labels, zone)
            except CapacityError as e:
                plan.refused(refusal(e.__cause__ or e, zone))
                self._delete_in_zone(req.name, zone)  # a half-made instance must not linger
        if not plan.tried:
            raise CapacityError(plan.none_offered(self.zones))
        what = cfg.machine_type + (f" with {req.gpu_count} × {req.accelerator}" if req.attach else "")
        raise CapacityError(plan.failure(what, self.project))

    def zones_offering(self, accelerator: str) -> set[str] | None:
        """The zones that offer an accelerator type (one aggregated list); None where they cannot be listed."""
        url = f"{self._api()}/projects/{self.project}/aggregated/acceleratorTypes"
        try:
            page = self._get_json(url, {"filter": f"name = {accelerator}"}, "list accelerator types")
        except ProviderError:
            return None
        return {scope.split("/", 1)[1] for scope, found in page.get("items", {}).items() if found.get("acceleratorTypes")}

    def get(self, name: str) -> Instance | None:
        for inst in self.list(name_filter=name):
            if inst.name == name:
                return inst
        return None

    def list(self, name_filter: str = "") -> list[Instance]:
        filt = f"labels.{TOOL_LABEL[0]} = {TOOL_LABEL[1]}"
        if name_filter:
            filt = f"({filt}) AND (name = {name_filter})"
        url = f"{self._api()}/projects/{self.project}/aggregated/instances"
        params, out = {"filter": filt}, []
        while True:
            page = self._get_json(url, params, "list instances")
            for scoped in page.get("items", {}).values():
                for i in scoped.get("instances", []):
                    out.append(Instance(i["name"], _state(i.get("status", "")), dict(i.get("labels", {})),
                                        i.get("zone", "").rsplit("/", 1)[-1]))
            if not page.get("nextPageToken"):
                return out
            params["pageToken"] = page["nextPageToken"]

    def _api(self) -> str:
        return f"{(self.endpoint or 'https://compute.googleapis.com').rstrip('/')}/compute/v1"

    def _get_json(self, url: str, params: dict, what: str) -> dict:
        import requests

        try:
            r = self.client.get(url, params=params, timeout=60)
        except requests.RequestException as e:
            raise ProviderError(f"cannot {what}: {e.__class__.__name__} reaching {url.split('/compute/')[0]}; "
                                "check your network") from e
        if r.status_code == 403:
            raise ProviderError(f"cannot {what}: permission denied; check the project ({self.project}) and that "
                                "your account may use Compute Engine")
        if r.status_code == 404:
            raise ProviderError(f"cannot {what}: project {self.project} not found; check GCE_PROJECT")
        if r.status_code != 200:
            raise ProviderError(f"cannot {what}: HTTP {r.status_code} {' '.join(r.text.split())[:200]}")
        return r.json()

    def delete(self, name: str) -> None:
        inst = self.get(name)
        if inst is not None:
            self._delete_in_zone(name, inst.zone)

    def _delete_in_zone(self, name: str, zone: str) -> None:
        from google.api_core import exceptions

        from . import compute

        try:
            with translate(f"delete {name}"):
                compute.delete(self.client, self._api(), self.project, zone, name)
        except ProviderError as e:
            if not isinstance(e.__cause__, exceptions.NotFound):
                raise


def _credentials(endpoint: str):
    """Anonymous for an emulator, else the application default credentials."""
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=[SCOPES[1]])[0]
    except DefaultCredentialsError:
        raise KitError("no Google credentials found; run `gcloud auth application-default login` "
                       "or set GOOGLE_APPLICATION_CREDENTIALS to a key file") from None


def _state(status: str) -> str:
    # STOPPING/TERMINATED/SUSPENDED no longer run the command (TERMINATED still bills its disk
    # until deleted; the reaper deletes it).
    return {"PROVISIONING": "PROVISIONING", "STAGING": "PROVISIONING", "RUNNING": "RUNNING"}.get(status, "TERMINATED")
