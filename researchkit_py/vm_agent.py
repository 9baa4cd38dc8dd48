"""The helper the startup script calls on the VM: status, heartbeat, transfers, self-delete.

It is shipped inside the startup script itself (see startup.py), so it is in place before
anything else is installed. Its environment is read here, once (VMEnv): RK_STORE (bucket
URL) and RK_STORE_CLASS (its store), RK_RUN_ID, RK_ROOT (the VM's scratch directory),
RK_PROVIDER, and what the clouds' VM pieces and stores need (metadata endpoint, emulators,
retries). Only `self-delete` must
work with a bare python3: it imports nothing outside the standard library.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import protocol


@dataclass
class VMEnv:
    run_id: str
    store_url: str
    store_class: str  # "module:Class" of the bucket's store
    root: Path
    provider: str
    environ: dict[str, str]

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> VMEnv:
        def need(name: str) -> str:
            if not environ.get(name):
                raise SystemExit(f"vm_agent: {name} is not set")
            return environ[name]

        return cls(need("RK_RUN_ID"), need("RK_STORE"), need("RK_STORE_CLASS"), Path(need("RK_ROOT")),
                   need("RK_PROVIDER"), dict(environ))


class Agent:
    def __init__(self, env: VMEnv):
        self.env = env
        self._store = None

    @property
    def store(self):
        """The run's bucket, through the store class the client named (RK_STORE_CLASS): the VM
        carries only that cloud's store, not the registry."""
        if self._store is None:  # one client per process: commands may be chained (see main)
            from .settings import Settings

            module, _, name = self.env.store_class.partition(":")
            store_class = getattr(importlib.import_module(module), name)
            self._store = store_class.open_url(self.env.store_url, Settings(environ=self.env.environ, read_file=False))
        return self._store

    def key(self, name: str) -> str:
        return protocol.run_key(self.env.run_id, name)

    @property
    def log_path(self) -> Path:
        return self.env.root / "run.log"

    def write_status(self, phase: str, **fields) -> None:
        facts = self.env.root / protocol.GPU_FACTS
        if facts.exists():
            fields.setdefault("gpu", json.loads(facts.read_text()))
        record = protocol.status_record(self.env.run_id, phase, host=socket.gethostname(), **fields)
        self.store.write_json(self.key(protocol.STATUS), record)

    def push_log(self) -> None:
        if self.log_path.exists():
            self.store.put_file(self.log_path, self.key(protocol.LOG))

    def heartbeat(self) -> None:
        self.store.put_bytes(self.key(protocol.HEARTBEAT), f"{time.time():.3f}\n".encode())
        self.push_log()

    def get_bundle(self, key: str, dest: str) -> None:
        from .storage.paths import extract_tar

        archive = self.env.root / "bundle.tar.gz"
        self.store.get_file(key, archive)
        n = extract_tar(archive, Path(dest))
        print(f"researchkit: unpacked {n} files of {key}", flush=True)

    def get_data(self, dest: str) -> None:
        from .storage.transfer import pull_tree

        stats = pull_tree(self.store, self.key(protocol.DATA), Path(dest))
        print(f"researchkit: fetched {stats.files} data files ({stats.bytes} bytes)", flush=True)

    def push_results(self, results_dir: str) -> None:
        """Upload results (and packs of the small ones), then results.manifest.json last: its
        presence means 'complete'."""
        from .storage.transfer import put_results

        manifest, stats = put_results(self.store, Path(results_dir), protocol.run_prefix(self.env.run_id),
                                      self.env.root / "packs")
        self.store.write_json(self.key(protocol.RESULTS_MANIFEST), {"run_id": self.env.run_id, **manifest})
        print(f"researchkit: uploaded {stats.files} result files ({stats.bytes} bytes, "
              f"{len(manifest['files'])} in manifest, {len(manifest['packs'])} packs)")

    def finish(self, stage: str, cmd_rc: str, cause: str) -> None:
        """The EXIT trap's report: upload the last log, then the final status."""
        rc = int(cmd_rc) if cmd_rc not in ("", None) else None
        fields = protocol.final_status(stage, rc, cause)
        print(f"researchkit: {fields['phase']} ({fields['message']})", flush=True)
        try:
            self.push_log()
        finally:
            self.write_status(fields.pop("phase"), **fields)

    def gpu_check(self, workdir: str, asked: str, wait: str) -> None:
        self.store.get_file(self.key(protocol.GPU_CHECK), Path(__file__).with_name(protocol.GPU_CHECK))
        from .gpu_check import check

        check(self.env.root, workdir, asked, float(wait))

    def self_delete(self) -> None:
        """The provider's own way for a VM to go (clouds/<provider>/vm.py, standard library only)."""
        importlib.import_module(f"researchkit_py.clouds.{self.env.provider}.vm").self_delete(self.env.environ)


USAGE = "usage: vm_agent status STAGE|heartbeat|get-bundle KEY DIR|get-data DIR|push-results DIR|gpu-check DIR GPU WAIT|finish STAGE RC CAUSE|self-delete [-- ...]"


def main(argv: list[str], agent: Agent) -> int:
    """Run one command, or several separated by `--` (one Python start for all: on a small VM
    each start costs a fraction of a second)."""
    if "--" in argv:
        i = argv.index("--")
        return main(argv[:i], agent) or main(argv[i + 1:], agent)
    commands = {
        "status": lambda a: agent.write_status(*a),
        "heartbeat": lambda a: agent.heartbeat(),
        "get-bundle": lambda a: agent.get_bundle(*a),
        "get-data": lambda a: agent.get_data(*a),
        "push-results": lambda a: agent.push_results(*a),
        "gpu-check": lambda a: agent.gpu_check(*a),
        "finish": lambda a: agent.finish(*a),
        "self-delete": lambda a: agent.self_delete(),
    }
    if not argv or argv[0] not in commands:
        print(USAGE if not argv else f"vm_agent: unknown command {argv[0]}", file=sys.stderr)
        return 2
    commands[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Agent(VMEnv.from_environ(dict(os.environ)))))
