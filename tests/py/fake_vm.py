"""Fake GCE VMs that really boot from the rendered startup script.

When the fake Compute API inserts an instance, a VM starts: its own metadata server
(computeMetadata/v1 with the Metadata-Flavor check, name, zone, project, a token), a
scratch root, and `bash` running the startup-script from the instance's metadata with the
test environment's Python as the image's. It reaches the storage emulator and the fake API
only through the endpoints it is given. Its `shutdown` is a shim that records the power-off.
The VM's self-delete call to the fake API ends it; so does `kill` (preemption).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MetadataServer:
    def __init__(self, name: str, zone: str, project: str, attributes: dict[str, str]):
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

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/computeMetadata/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeVMs:
    """Boots a VM per inserted instance of `gce` (a FakeGCE); `storage_env` points at the emulator."""

    def __init__(self, gce, root: Path, storage_env: dict[str, str]):
        self.gce, self.root, self.storage_env = gce, Path(root), storage_env
        self.vms: dict[str, dict] = {}
        self.poweroffs: list[str] = []
        gce.on_insert = self.boot
        gce.on_delete = self.on_delete

    def boot(self, project: str, zone: str, instance: dict) -> None:
        name = instance["name"]
        attrs = {i["key"]: i["value"] for i in instance.get("metadata", {}).get("items", [])}
        meta = MetadataServer(name, zone, project, attrs)
        vm_root = self.root / name
        (vm_root / "bin").mkdir(parents=True)
        (vm_root / "home").mkdir()
        for shim in ("shutdown", "poweroff", "halt"):
            p = vm_root / "bin" / shim
            p.write_text(f"#!/bin/sh\necho \"{shim} $*\" >> '{vm_root}/poweroff'\n")
            p.chmod(0o755)
        image_python = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{vm_root / 'bin'}:{image_python}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(vm_root / "home"), "LANG": "C.UTF-8",
            "RK_VM_ROOT": str(vm_root / "var"), "RK_METADATA_URL": meta.url,
            "RK_COMPUTE_API": f"{self.gce.url}/compute/v1", **self.storage_env,
        }
        script = attrs.get("startup-script", "")
        (vm_root / "startup-script").write_text(script)
        console = open(vm_root / "console.log", "wb")
        proc = subprocess.Popen(["bash", str(vm_root / "startup-script")], cwd=vm_root, env=env,
                                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
        self.vms[name] = {"proc": proc, "meta": meta, "root": vm_root, "console": console, "zone": zone}

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
            vm["meta"].stop()
            vm["console"].close()
