"""The embedded VM's self-delete: its instance record goes (standard library only)."""

from __future__ import annotations

from pathlib import Path


def self_delete(env: dict[str, str]) -> None:
    record = env.get("RK_LOCAL_INSTANCE")
    if record:
        Path(record).unlink(missing_ok=True)
