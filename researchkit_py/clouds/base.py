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
    """The machine types preflight recommends, by what an experiment needs; `gpu` is the GPU
    model a profile gets when it asks for a GPU without naming one."""

    cpu_small: str
    cpu_large: str
    memory_large: str
    gpu: str


@dataclass(frozen=True)
class GPUShape:
    """A machine type that carries `count` GPUs of one model. On GCE `accelerator` is the
    accelerator type (what zones offer); `attach` when it is attached to the machine type
    (guestAccelerators, N1) rather than built in (A2, A3, G2)."""

    gpu: str
    count: int
    machine_type: str
    accelerator: str = ""
    attach: bool = False
    spot_only: bool = False  # offered only as spot capacity


def gpu_shapes(gpu: str, counts: dict[int, str], accelerator: str = "", attach: bool = False,
               spot_only: tuple[int, ...] = ()) -> tuple[GPUShape, ...]:
    """One GPU model's shapes: {count: machine type}."""
    return tuple(GPUShape(gpu, n, mt, accelerator, attach, n in spot_only) for n, mt in counts.items())


@dataclass(frozen=True)
class Machine:
    """What a run gets: a machine type ("" for the provider's default) and its GPUs. One
    function decides it (machine.choose) for preflight, the RUN directive and the launch."""

    machine_type: str = ""
    gpu: str = ""  # the GPU model ("" for none; "GPU" for a machine type not in the table)
    gpu_count: int = 0
    accelerator: str = ""
    attach: bool = False
    source: str = ""  # where the choice came from, for messages

    def gpu_text(self) -> str:
        return f"{self.gpu_count} × {self.gpu}" if self.gpu_count else "no GPU"

    def describe(self) -> str:
        """How messages name it: `g2-standard-4 (1 × L4)`."""
        name = self.machine_type or "this machine"
        return f"{name} ({self.gpu_text()})" if self.gpu_count else name


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
    accelerator_prices: dict[str, float] = field(default_factory=dict)  # USD per attached GPU per hour
    shapes: Shapes | None = None
    machine_setting: str = ""  # the setting that names the machine type when a run names none
    gpus: tuple[GPUShape, ...] = ()  # the GPU shapes, by model and count
    gpu_machine_types: str = ""  # a regex: machine types with built-in GPUs beyond the table
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
    gpu_count: int = 0  # > 0: a GPU VM (an image with drivers; on GCE, TERMINATE on host maintenance)
    accelerator: str = ""  # GCE: the accelerator type its zones must offer
    attach: bool = False  # GCE: attach gpu_count of it (guestAccelerators)


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

    def check(self, req: InstanceRequest) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Raise a KitError for a request the cloud would refuse, before the run is recorded."""

    def image(self, req: InstanceRequest) -> str:
        """The image the instance would boot, and where that choice comes from (shown by --dry-run)."""
        return ""

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
