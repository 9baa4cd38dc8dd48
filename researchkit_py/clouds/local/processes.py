"""The processes of an embedded VM: found by their session and a marker in their
environment, so a recycled pid or session id never makes us touch someone else's."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """The process start time from /proc, so a recycled pid is not taken for ours."""
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None and start_time(pid) not in (None, start):
        return False
    stat = _proc_stat(pid)
    return not (stat and stat[0] == "Z")


def session_pids(sid: int, marker: str | None = None) -> list[int]:
    """The live processes of a local VM: those of its session that carry its marker in their
    environment (so a recycled session id never makes us touch someone else's processes)."""
    if not Path("/proc").is_dir():
        return [sid]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if not stat or int(stat[3]) != sid or stat[0] == "Z":
            continue
        if marker is None or _has_marker(int(entry), marker):
            pids.append(int(entry))
    return pids


def _has_marker(pid: int, marker: str) -> bool:
    try:
        return f"RK_LOCAL_INSTANCE={marker}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def kill_session(sid: int, sig: int, marker: str | None = None, spare: int | None = None) -> None:
    if not Path("/proc").is_dir():
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            pass
        return
    for pid in session_pids(sid, marker):
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_session_gone(sid: int, marker: str, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end and session_pids(sid, marker):
        time.sleep(0.05)


def remove_vm_dir(path: Path, keep: bool) -> None:
    if path.name and path.is_dir() and not keep:
        shutil.rmtree(path, ignore_errors=True)
