"""The VM agent as it travels: which modules a VM of one provider carries for one bucket, its
core as a payload for the startup script, the rest as an archive for the bucket.

The core is all the VM needs to report (status, heartbeat, log, the final status) and to fetch
the rest; it must fit in EC2's 16 KB of user data with the script around it. The rest — setup
and transfers — is named by its content (code/<sha256>.tar.gz) and uploaded once per bucket.
Modules travel without docstrings and comments.
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import io
import re
import sys
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .clouds.registry import CLOUDS, store_cloud
from .errors import KitError
from .protocol import bundle_key

PACKAGE_DIR = Path(__file__).resolve().parent
# Paths under researchkit_py/; the clouds add theirs to each (clouds/base.py: vm_modules,
# vm_store_modules).
AGENT_CORE = ("__init__.py", "errors.py", "settings.py", "protocol.py", "vm_agent.py", "clouds/__init__.py")
AGENT_REST = ("vm_setup.py", "gpu_check.py", "vm_log.py", "storage/__init__.py", "storage/base.py", "storage/paths.py",
              "storage/transfer.py", "storage/parallel.py", "storage/digest.py")


def _compact(source: bytes) -> bytes:
    """The module without docstrings and comments: it travels in user data (16 KB on EC2)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    # ast.unparse writes one physical line per logical line (strings as one-line reprs): each
    # line's four-space indent steps can become one space each, a few hundred bytes of user data
    lines = (re.sub(r"^(?:    )+", lambda m: " " * (len(m.group()) // 4), line) for line in ast.unparse(tree).splitlines())
    return "\n".join(lines).encode()


@dataclass(frozen=True)
class VMAgent:
    """What a VM of one provider runs for one bucket: the classes ("module:Class") its reports
    and its transfers reach the bucket with, its core modules (in the script), the rest, and
    the Python it runs on."""

    bucket_class: str
    store_class: str
    core: tuple[str, ...]
    rest: tuple[str, ...]
    python: str = "python3"
    serve: bool = False  # one agent process answers the script's calls (vm_serve.py)


def vm_agent(provider: str, store_url: str) -> VMAgent:
    """A cloud VM reaches its own cloud's buckets, with its own credentials, through the standard
    library; the embedded provider's (this machine) runs on the client's interpreter, with its
    store, SDK and credentials."""
    vm, bucket = CLOUDS[provider], store_cloud(store_url)
    packages = tuple(sorted({f"clouds/{vm.name}/__init__.py", f"clouds/{bucket.name}/__init__.py"}))
    if vm.vm_here:
        core = (*AGENT_CORE, *packages, *vm.vm_modules, *AGENT_REST, *bucket.store_modules, "vm_serve.py")
        # Where the bucket is a directory, one agent process answers the script's calls
        # (vm_serve.py); a cloud's bucket keeps its SDK's client per process, as on a cloud VM.
        # Site stays: the setup finds this Python's uv there.
        return VMAgent(bucket.store, bucket.store, core, AGENT_REST, sys.executable, bucket.name == vm.name)
    if bucket.name != vm.name:
        raise KitError(f"{vm.title} VMs cannot use the bucket {store_url}: their credentials reach "
                       f"{vm.scheme}:// buckets only; set RK_BUCKET to one")
    return VMAgent(bucket.vm_bucket, bucket.vm_store, (*AGENT_CORE, *packages, *vm.vm_modules),
                   (*AGENT_REST, *bucket.vm_store_modules))


def _archive(modules: tuple[str, ...], compact: bool = True) -> bytes:
    """The modules, compacted (for a cloud VM: ast is slow, 0.1-0.3 s a launch, but user data
    is small) as a reproducible tar.gz; or as they are for this machine, with their mtimes and
    the bytecode this interpreter already compiled for them (_compiled), lightly compressed:
    the embedded VM's agent then neither compiles them nor waits on gzip -9 (0.03 s each)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for rel in dict.fromkeys(modules):
            path = PACKAGE_DIR / rel
            data = path.read_bytes()
            mtime = 315532800 if compact else int(path.stat().st_mtime)
            entries = [(rel, _compact(data) if compact else data)]
            if not compact and (pyc := _compiled(path, data, mtime)):
                entries.append((str(Path(rel).parent / "__pycache__" / Path(pyc[0]).name), pyc[1]))
            for name, body in entries:
                info = tarfile.TarInfo(f"researchkit_py/{name}")
                info.size, info.mode, info.mtime = len(body), 0o644, mtime
                tar.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue(), compresslevel=9 if compact else 1, mtime=0)


def _compiled(path: Path, source: bytes, mtime: int) -> tuple[str, bytes] | None:
    """This module's bytecode as this interpreter cached it, if it is that of `source` as it is
    now (a timestamp .pyc: the source's mtime and size in its header), else None."""
    from importlib.util import MAGIC_NUMBER, cache_from_source

    try:
        cached = cache_from_source(str(path))
        pyc = Path(cached).read_bytes()
    except (NotImplementedError, OSError):
        return None
    header = MAGIC_NUMBER + bytes(4) + (mtime & 0xFFFFFFFF).to_bytes(4, "little") + (len(source) & 0xFFFFFFFF).to_bytes(4, "little")
    return (cached, pyc) if pyc[:16] == header else None


@lru_cache(maxsize=8)
def agent_payload(provider: str, store_url: str) -> str:
    """The agent's core as base64 tar.gz, for the script (made once per process: many launches
    from one command share it)."""
    b64 = base64.b64encode(_archive(vm_agent(provider, store_url).core, not CLOUDS[provider].vm_here)).decode()
    return "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))


@lru_cache(maxsize=8)
def agent_rest(provider: str, store_url: str) -> tuple[str, bytes]:
    """The rest of the agent: its key in the bucket (named by its content) and the archive."""
    data = _archive(vm_agent(provider, store_url).rest, not CLOUDS[provider].vm_here)
    return bundle_key(hashlib.sha256(data).hexdigest()), data
