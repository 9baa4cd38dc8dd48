"""Fake GCE VMs that really boot from the rendered startup script.

When the fake Compute API inserts an instance, a VM starts: a metadata server
(computeMetadata/v1 with the Metadata-Flavor check, name, zone, project, a token), a
scratch root, and `bash` running the startup-script from the instance's metadata, with the
test environment's Python as the image's. Its `shutdown` is a shim that records the
power-off. The VM's self-delete call to the fake API ends it; so does `preempt`.

Two isolation levels:
- `netns` (root, bwrap and ip available): the VM has its own network namespace, joined by
  a veth pair to a bridge on which the emulators listen, with no default route (it reaches
  only them); its metadata server answers on 169.254.169.254:80 inside the namespace and
  `metadata.google.internal` resolves there through the VM's /etc/hosts; bwrap gives it
  the host's root read-only, its own /tmp, /root and hostname.
- `process`: a plain process group; the agent finds its metadata server through
  RK_METADATA_URL. Used where namespaces are not available.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MetadataServer:
    def __init__(self, name: str, zone: str, project: str, attributes: dict[str, str], host: str = "127.0.0.1",
                 port: int = 0, log_path: str | None = None, background: bool = True):
        token = f"fake-token-{name}"
        values = {
            "instance/name": name, "instance/zone": f"projects/123456/zones/{zone}", "project/project-id": project,
            "instance/service-accounts/default/token": json.dumps({"access_token": token, "expires_in": 3600,
                                                                  "token_type": "Bearer"}),
            **{f"instance/attributes/{k}": v for k, v in attributes.items()},
        }

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                key = self.path.split("?")[0].removeprefix("/computeMetadata/v1/")
                if log_path:
                    with open(log_path, "a") as f:
                        f.write(f"{self.headers.get('Host')} {key}\n")
                if self.headers.get("Metadata-Flavor") != "Google":
                    self.send_response(403)
                    self.end_headers()
                    return
                body = values.get(key)
                self.send_response(200 if body is not None else 404)
                self.send_header("Metadata-Flavor", "Google")
                self.end_headers()
                self.wfile.write((body or "").encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):  # no getfqdn(): it can hang without DNS
                import socketserver

                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        self.server = Server((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/computeMetadata/v1"
        if background:
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class VMNetwork:
    """A bridge for the fake VMs' namespaces; the emulators listen on its address."""

    def __init__(self, subnet: int):
        self.bridge = f"rkbr{os.getpid() % 100000}"
        self.prefix = f"10.213.{subnet}"
        self.host_ip = f"{self.prefix}.1"
        self.count = 0
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be used here, else why not."""
        if os.environ.get("RK_TEST_VM_ISOLATION") == "process":
            return "RK_TEST_VM_ISOLATION=process"
        if os.geteuid() != 0:
            return "not root"
        missing = [t for t in ("bwrap", "ip") if not shutil.which(t)]
        if missing:
            return f"{' and '.join(missing)} not installed (Debian: bubblewrap, iproute2)"
        probe = f"rkprobe{os.getpid() % 100000}"
        try:
            _ip("netns", "add", probe)
            _ip("netns", "del", probe)
        except (subprocess.CalledProcessError, OSError) as e:
            return f"cannot create network namespaces ({e})"
        return None

    def add(self) -> tuple[str, str, str]:
        """A namespace wired to the bridge with no default route: (netns, veth on host, VM address)."""
        self.count += 1
        tag = f"{os.getpid() % 100000}{self.count:03d}"
        ns, host_if, vm_if, addr = f"rkvm{tag}", f"rkh{tag}", f"rkv{tag}", f"{self.prefix}.{9 + self.count}"
        _ip("netns", "add", ns)
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", vm_if)
            _ip("link", "set", vm_if, "netns", ns)
            _ip("link", "set", host_if, "master", self.bridge, "up")
            for args in (("addr", "add", f"{addr}/24", "dev", vm_if), ("link", "set", vm_if, "up"),
                         ("link", "set", "lo", "up"), ("addr", "add", "169.254.169.254/32", "dev", "lo")):
                _ip("netns", "exec", ns, "ip", *args)
        except subprocess.CalledProcessError:
            self.remove(ns, host_if)
            raise
        return ns, host_if, addr

    @staticmethod
    def remove(ns: str, host_if: str) -> None:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)

    def stop(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class FakeVMs:
    """Boots a VM per inserted instance of `gce` (a FakeGCE); `storage_env` points at the emulator.
    With a VMNetwork each VM gets its own namespace; without, a plain process group."""

    booted = {"netns": 0, "process": 0}  # reported at the end of the test session

    def __init__(self, gce, root: Path, storage_env: dict[str, str], network: VMNetwork | None = None):
        self.gce, self.root, self.storage_env, self.network = gce, Path(root), storage_env, network
        self.vms: dict[str, dict] = {}
        gce.on_insert = self.boot
        gce.on_delete = self.on_delete

    def boot(self, project: str, zone: str, instance: dict) -> None:
        name = instance["name"]
        attrs = {i["key"]: i["value"] for i in instance.get("metadata", {}).get("items", [])}
        vm_root = self.root / name
        (vm_root / "bin").mkdir(parents=True)
        (vm_root / "home").mkdir()
        for shim in ("shutdown", "poweroff", "halt"):
            p = vm_root / "bin" / shim
            p.write_text(f"#!/bin/sh\necho \"{shim} $*\" >> '{vm_root}/poweroff'\n")
            p.chmod(0o755)
        (vm_root / "startup-script").write_text(attrs.get("startup-script", ""))
        env = {
            "PATH": f"{vm_root / 'bin'}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(vm_root / "home"), "LANG": "C.UTF-8", "RK_VM_ROOT": str(vm_root / "var"),
            "RK_COMPUTE_API": f"{self.gce.url}/compute/v1", **self.storage_env,
        }
        vm = {"root": vm_root, "zone": zone, "console": open(vm_root / "console.log", "wb"), "meta": None, "net": None}
        if self.network is None:
            vm["meta"] = MetadataServer(name, zone, project, attrs, log_path=str(vm_root / "metadata.log"))
            env["RK_METADATA_URL"] = vm["meta"].url
            argv = ["bash", str(vm_root / "startup-script")]
            FakeVMs.booted["process"] += 1
        else:
            ns, host_if, _addr = self.network.add()
            vm["net"] = (ns, host_if)
            cfg = vm_root / "metadata.json"
            cfg.write_text(json.dumps({"name": name, "zone": zone, "project": project, "attributes": attrs,
                                       "bind": "169.254.169.254", "port": 80, "log": str(vm_root / "metadata.log")}))
            vm["meta_proc"] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).with_name("metadata_server.py")), str(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=vm["console"],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
            (vm_root / "hosts").write_text("127.0.0.1 localhost\n169.254.169.254 metadata.google.internal metadata\n")
            argv = ["ip", "netns", "exec", ns, "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                    "--tmpfs", "/tmp", "--tmpfs", "/root", *_bind_back_python(), "--bind", str(vm_root), str(vm_root),
                    "--ro-bind", str(vm_root / "hosts"), "/etc/hosts", "--unshare-uts", "--hostname", name[:63],
                    "--die-with-parent", "--chdir", str(vm_root), "bash", str(vm_root / "startup-script")]
            _wait_for_metadata(ns)
            FakeVMs.booted["netns"] += 1
        vm["proc"] = subprocess.Popen(argv, cwd=vm_root, env=env, stdin=subprocess.DEVNULL, stdout=vm["console"],
                                      stderr=vm["console"], start_new_session=True)
        self.vms[name] = vm

    def on_delete(self, project: str, zone: str, instance: dict) -> None:
        # like GCE: the VM is shut down shortly after the API accepts the delete (only the
        # instance in that zone: a half-made namesake elsewhere has no VM)
        threading.Timer(0.5, self.kill, args=(instance["name"], zone)).start()

    def kill(self, name: str, zone: str | None = None, sig: int = signal.SIGKILL) -> None:
        vm = self.vms.get(name)
        if vm is None or (zone is not None and vm["zone"] != zone):
            return
        try:
            os.killpg(vm["proc"].pid, sig)
        except ProcessLookupError:
            pass

    def preempt(self, name: str) -> None:
        """The VM dies at once (no trap runs) and disappears from the API."""
        self.kill(name)
        with self.gce.lock:
            for key in [k for k in self.gce.instances if k[2] == name]:
                self.gce.instances.pop(key)

    def running(self, name: str) -> bool:
        vm = self.vms.get(name)
        return bool(vm) and vm["proc"].poll() is None

    def wait_all_gone(self, timeout: float = 60) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if not self.gce.names() and not any(self.running(n) for n in self.vms):
                return
            time.sleep(0.1)
        raise AssertionError(f"VMs still there after {timeout}s: {self.gce.names()}; consoles: "
                             + "; ".join(f"{n}: {(v['root'] / 'console.log').read_text()[-500:]}" for n, v in self.vms.items()))

    def stop(self) -> None:
        for name, vm in self.vms.items():
            self.kill(name)
            if vm["meta"]:
                vm["meta"].stop()
            if vm.get("meta_proc"):
                vm["meta_proc"].kill()
                vm["meta_proc"].wait()
            if vm["net"]:
                VMNetwork.remove(*vm["net"])
            vm["console"].close()


def _bind_back_python() -> list[str]:
    """The image's Python (a venv and the interpreter behind it) may live under /tmp or
    /root (pyenv), which the VM's own tmpfs mounts hide: bind them back, read-only."""
    out: list[str] = []
    for path in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if path.startswith(("/tmp/", "/root/")):
            out += ["--ro-bind", path, path]
    return out


def _wait_for_metadata(ns: str, timeout: float = 10) -> None:
    end = time.time() + timeout
    probe = ("import urllib.request as u; u.urlopen(u.Request('http://169.254.169.254/computeMetadata/v1/instance/name',"
             " headers={'Metadata-Flavor': 'Google'}), timeout=1)")
    while time.time() < end:
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the metadata server in {ns} did not start")
