"""The provider interface: what every compute backend (local, gce, ec2) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Settings

TOOL_LABEL = ("researchkit-tool", "researchkit")


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
    #: Python module that proves the VM's python3 can already talk to the bucket.

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
