"""What every cloud declares (a `Cloud`) and implements (a `Provider`).

A cloud is one folder under clouds/: its provider (instances), its store (the bucket), the
pieces the VM agent needs there, its prices and machine shapes, its settings. The registry
(clouds/__init__.py) lists the folders; nothing else names a cloud.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from ..settings import Settings

TOOL_LABEL = ("researchkit-tool", "researchkit")


@dataclass(frozen=True)
class Shapes:
    """The machine types preflight recommends, by what an experiment needs."""

    cpu_small: str
    cpu_large: str
    memory_large: str
    gpu_small: str
    gpu_large: str


@dataclass(frozen=True)
class Cloud:
    name: str  # COMPUTE_TARGET and --backend value
    title: str  # how prompts and messages name it
    where: str  # "… MUST run <where>" in the RUN directive
    provider: str  # "module:Class" of its Provider, imported on first use
    store: str  # "module:Class" of its Store
    scheme: str  # the bucket URL scheme its store serves ("" for a directory)
    # What its VMs carry (paths under researchkit_py/), standard library only. In the startup
    # script, with the agent's core: `vm_modules`, what a VM needs of its own cloud to report —
    # `vm_bucket` ("module:Class"), its buckets as the VM reaches them with its own credentials
    # — and to delete itself (a `vm.py` with self_delete(env), where that takes an API call).
    # Fetched from the bucket with the rest of the agent: `vm_store_modules`, those of
    # `vm_store`, the store the VM's transfers use. `vm_here`: its VMs are this machine (the
    # embedded provider): they use the client's `store` (its `store_modules`), SDK and credentials.
    vm_modules: tuple[str, ...] = ()
    vm_bucket: str = ""
    vm_store: str = ""
    vm_store_modules: tuple[str, ...] = ()
    store_modules: tuple[str, ...] = ()
    vm_here: bool = False
    prices: dict[str, float] = field(default_factory=dict)  # on-demand USD per hour, by machine type
    shapes: Shapes | None = None
    defaults: dict[str, str] = field(default_factory=dict)  # its settings (documented in docs/settings.md)


@dataclass
class InstanceRequest:
    name: str
    run_id: str
    startup_script: str
    labels: dict[str, str]
    max_seconds: int
    machine_type: str = ""
    spot: bool = False


@dataclass
class Instance:
    name: str
    state: str  # RUNNING | STOPPING | TERMINATED | PROVISIONING
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""

    @property
    def alive(self) -> bool:
        return self.state not in ("TERMINATED", "STOPPED", "DELETED")


class Provider(ABC):
    name: ClassVar[str]

    def __init__(self, settings: Settings):
        self.settings = settings

    @abstractmethod
    def default_store_url(self) -> str:
        """The bucket to use when RK_BUCKET is not set."""

    def default_machine_type(self) -> str:
        """The instance type used when a launch names none ("" for the embedded provider)."""
        return ""

    def prepare(self, store) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called once before a launch: e.g. create the bucket if the provider owns its default."""

    def request_body(self, req: InstanceRequest) -> dict:
        """What create() would send, as the API documents it (shown by --dry-run)."""
        return {"name": req.name, "labels": req.labels, "max_seconds": req.max_seconds}

    @abstractmethod
    def create(self, req: InstanceRequest) -> Instance:
        """Create the instance booting req.startup_script. Idempotent per req.run_id."""

    @abstractmethod
    def get(self, name: str) -> Instance | None: ...

    @abstractmethod
    def list(self) -> list[Instance]:
        """This tool's instances (by label), in one call."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete; a missing instance is not an error."""

    @abstractmethod
    def deadline_lines(self, max_seconds: int) -> str:
        """Bash run first on the VM: the hard deadline where the provider needs one in-script."""

    @abstractmethod
    def self_delete_lines(self) -> str:
        """Bash body that makes the VM go away (the last thing the EXIT trap does)."""
