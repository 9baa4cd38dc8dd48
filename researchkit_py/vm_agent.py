"""The helper the startup script calls on the VM: status, heartbeat, the final report,
self-delete; the rest of the agent, the code, data, requirements and results.

Its core (this module, the protocol, the settings and the cloud's VM pieces) is shipped inside
the startup script itself (see startup.py) and needs only python3's standard library on a cloud
VM: the reports go through the cloud's VMBucket (its REST API, the VM's own credentials), so
they reach the bucket before anything is installed — and whatever fails after. The rest (setup
and transfers: vm_setup, storage/, the cloud's REST store) comes from the bucket (`get-agent`).

Its environment is read here, once (VMEnv): RK_STORE (bucket URL), RK_BUCKET_CLASS and
RK_STORE_CLASS (what reaches it for reports and for transfers), RK_RUN_ID, RK_ROOT (the VM's
scratch directory), RK_PROVIDER, and what the clouds' VM pieces, stores and the setup need
(metadata endpoint, emulators, retries, the package index). A command that fails says why in
one line, and leaves that line in RK_ROOT/reason for the final status (`finish`) to carry.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import re
import socket
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import protocol
from .errors import KitError, NotFound
from .settings import Settings


@dataclass
class VMEnv:
    run_id: str
    store_url: str
    bucket_class: str  # "module:Class": the bucket for the reports
    store_class: str  # "module:Class": the bucket's store, for transfers
    root: Path
    provider: str
    environ: dict[str, str]

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> VMEnv:
        def need(name: str) -> str:
            if not environ.get(name):
                raise SystemExit(f"vm_agent: {name} is not set")
            return environ[name]

        return cls(need("RK_RUN_ID"), need("RK_STORE"), need("RK_BUCKET_CLASS"), need("RK_STORE_CLASS"),
                   Path(need("RK_ROOT")), need("RK_PROVIDER"), dict(environ))


class Agent:
    def __init__(self, env: VMEnv):
        self.env = env
        self._opened: dict[str, object] = {}  # one client per process: commands may be chained (see main)

    def _open(self, ref: str):
        """The run's bucket through a class the client named: the VM carries only what it needs,
        not the registry."""
        if ref not in self._opened:
            module, _, name = ref.partition(":")
            cls = getattr(importlib.import_module(module), name)
            self._opened[ref] = cls.open_url(self.env.store_url, Settings(environ=self.env.environ, read_file=False))
        return self._opened[ref]

    @property
    def bucket(self):
        """For the reports: put_bytes, put_file, get_file (retried)."""
        return self._open(self.env.bucket_class)

    @property
    def store(self):
        """For transfers: a storage.base.Store (from the rest of the agent)."""
        return self._open(self.env.store_class)

    def key(self, name: str) -> str:
        return protocol.run_key(self.env.run_id, name)

    @property
    def log_path(self) -> Path:
        return self.env.root / "run.log"

    @property
    def reason_path(self) -> Path:
        return self.env.root / "reason"

    def write_status(self, phase: str, **fields) -> int:
        """The run's status.json; CANCEL_RC, writing nothing, when the run was asked to stop before
        its command started (BOOT, SETUP): the client may have written the final status already
        (an interrupted launch whose instance the cloud had not listed, so not deleted: its VM
        must not report over it), and the command is not to start."""
        if phase in (protocol.BOOT, protocol.SETUP) and self.cancel_requested():
            return CANCEL_RC
        facts = self.env.root / protocol.GPU_FACTS
        if facts.exists():
            fields.setdefault("gpu", json.loads(facts.read_text()))
        record = protocol.status_record(self.env.run_id, phase, host=socket.gethostname(), **fields)
        self.bucket.put_bytes(self.key(protocol.STATUS), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        return 0

    def push_log(self, final: bool = False) -> None:
        """What the log gained since the last push (vm_log.py, in the rest of the agent; heartbeats
        start once it is here). A VM whose setup failed before it came sends its log whole."""
        try:
            from .vm_log import push_log
        except ImportError:
            if self.log_path.exists():
                self.bucket.put_bytes(self.key(protocol.LOG), self.log_path.read_bytes())
            return
        push_log(self, final)

    def heartbeat(self) -> int:
        """Beat, ship the log, and look for the client's request to stop: exit status CANCEL_RC
        then (the script's heartbeat loop signals the script, whose trap ends the run)."""
        self.bucket.put_bytes(self.key(protocol.HEARTBEAT), f"{time.time():.3f}\n".encode())
        self.push_log()
        return CANCEL_RC if self.cancel_requested() else 0

    def cancel_requested(self) -> bool:
        """The client asked the run to stop (protocol.CANCEL). get_file: what every bucket
        class offers, the VM's own and the embedded provider's stores alike."""
        try:
            self.bucket.get_file(self.key(protocol.CANCEL), self.env.root / protocol.CANCEL)
        except NotFound:
            return False
        return True

    def boot(self) -> int:
        """Status BOOT, with what the image has: the VM's first word, before anything is installed."""
        release = Path("/etc/os-release")
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', release.read_text() if release.is_file() else "", re.M)
        missing = [n for n, mod in (("pip", "pip"), ("venv", "ensurepip")) if importlib.util.find_spec(mod) is None]
        image = {"os": m.group(1) if m else platform.platform(), "python": platform.python_version(),
                 "arch": platform.machine(), "missing": missing}
        print(f"researchkit: image: {image['os']}, python {image['python']}, {image['arch']}"
              + (f"; no {', '.join(missing)}" if missing else ""), flush=True)
        return self.write_status(protocol.BOOT, image=image)

    def get_agent(self, key: str) -> None:
        """The rest of the agent (setup and transfers), beside the core in RK_ROOT/agent."""
        archive = self.env.root / "agent.tar.gz"
        self.bucket.get_file(key, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(self.env.root / "agent")  # our own archive, named by its content

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

    def requirements(self, requirements: str, venv: str) -> None:
        from .vm_setup import install_requirements

        install_requirements(Path(requirements), Path(venv), self.env.root, self.env.environ)

    def push_results(self, results_dir: str) -> None:
        """Upload results (and packs of the small ones), then results.manifest.json last: its
        presence means 'complete'."""
        from .storage.transfer import put_results

        manifest, stats = put_results(self.store, Path(results_dir), protocol.run_prefix(self.env.run_id),
                                      self.env.root / "packs")
        self.store.write_json(self.key(protocol.RESULTS_MANIFEST), {"run_id": self.env.run_id, **manifest})
        print(f"researchkit: uploaded {stats.files} result files ({stats.bytes} bytes, "
              f"{len(manifest['files'])} in manifest, {len(manifest['packs'])} packs)")

    def finish(self, stage: str, cmd_rc: str, cause: str, step: str = "") -> None:
        """The EXIT trap's report: upload the last log, then the final status. `step` is the
        setup step the script was in; the reason its failing command left is added to it."""
        rc = int(cmd_rc) if cmd_rc not in ("", None) else None
        if stage != protocol.DONE and cause != protocol.CANCELLED_CAUSE:
            try:  # ended early after the client asked it to stop (a signal: it deletes a VM too slow to)
                cause = protocol.CANCELLED_CAUSE if self.cancel_requested() else cause
            except Exception:  # noqa: BLE001 - the final status matters more than its cause's precision
                pass
        reason = self.reason_path.read_text().strip() if self.reason_path.is_file() else ""
        fields = protocol.final_status(stage, rc, cause, ": ".join(filter(None, (step, reason))))
        print(f"researchkit: {fields['phase']} ({fields['message']})", flush=True)
        try:
            self.push_log(final=True)
        finally:
            self.write_status(fields.pop("phase"), **fields)

    def gpu_check(self, workdir: str, asked: str, wait: str) -> None:
        from .gpu_check import check  # in the rest of the agent

        check(self.env.root, workdir, asked, float(wait))

    def self_delete(self) -> None:
        """The provider's own way for a VM to go (clouds/<provider>/vm.py, standard library only)."""
        importlib.import_module(f"researchkit_py.clouds.{self.env.provider}.vm").self_delete(self.env.environ)


CANCEL_RC = 3  # `heartbeat`'s exit status when the client asked the run to stop


def main(argv: list[str], agent: Agent) -> int:
    """Run one command, or several separated by `--` (one Python start for all: on a small VM
    each start costs a fraction of a second)."""
    if "--" in argv:
        i = argv.index("--")
        return main(argv[:i], agent) or main(argv[i + 1:], agent)
    commands = {
        "boot": lambda a: agent.boot(),
        "status": lambda a: agent.write_status(*a),
        "heartbeat": lambda a: agent.heartbeat(),
        "get-agent": lambda a: agent.get_agent(*a),
        "get-bundle": lambda a: agent.get_bundle(*a),
        "get-data": lambda a: agent.get_data(*a),
        "requirements": lambda a: agent.requirements(*a),
        "push-results": lambda a: agent.push_results(*a),
        "gpu-check": lambda a: agent.gpu_check(*a),
        "finish": lambda a: agent.finish(*a),
        "self-delete": lambda a: agent.self_delete(),
    }
    if not argv or argv[0] not in commands:
        print(f"usage: vm_agent {'|'.join(commands)} [ARG...] [-- ...]" if not argv  # each command's args: Agent's methods
              else f"vm_agent: unknown command {argv[0]}", file=sys.stderr)
        return 2
    try:
        rc = commands[argv[0]](argv[1:])
    except Exception as e:  # noqa: BLE001 - said in a line, and kept for the final status
        reason = str(e) if isinstance(e, KitError) else f"{e.__class__.__name__}: {e}"
        print(f"researchkit: {argv[0]} failed: {reason}", file=sys.stderr, flush=True)
        if not isinstance(e, KitError):
            import traceback

            traceback.print_exc()
        if argv[0] != "heartbeat":  # a missed heartbeat is no step's failure
            agent.reason_path.write_text(reason + "\n")
        return 1
    return rc if isinstance(rc, int) else 0


def answer(argv: list[str], environ: dict[str, str]) -> int:
    """One `rk` call answered by the embedded VM's agent process (vm_serve.py), in the environment
    the script had when it made it: what a process of its own would see and do."""
    os.environ.clear()
    os.environ.update(environ)
    return main(argv, Agent(VMEnv.from_environ(environ)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:  # `serve REPLY_FD`: the embedded VM's one agent process
        from .vm_serve import serve

        sys.exit(serve(answer, int(sys.argv[2])))
    sys.exit(main(sys.argv[1:], Agent(VMEnv.from_environ(dict(os.environ)))))
