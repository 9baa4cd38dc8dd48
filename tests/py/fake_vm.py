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
  the host's root read-only, its own /tmp, /root and hostname, and its own PID namespace:
  when the VM ends, every process in it ends, as on a VM that is deleted (a process that
  leaves the VM's process group, as `timeout` does, outlived it before).
- `process`: a plain process group; the agent finds its metadata server through
  RK_METADATA_URL. Used where namespaces are not available.

With a `VMImage` (netns only), the VM boots from a bare root filesystem instead of the
host's (see bare_image.py and BARE_IMAGES.md): its image's layers, read-only, under a
writable layer of its own (an overlay mounted in the VM's private mount namespace).
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class MetadataServer:
    """A VM's metadata server: GCE's computeMetadata/v1 (Metadata-Flavor check) or AWS IMDSv2
    (session token required), from an identity dict: flavor, name, zone, project,
    attributes (GCE) / instance_id, user_data, role (AWS)."""

    def __init__(self, identity: dict, host: str = "127.0.0.1", port: int = 0, log_path: str | None = None,
                 background: bool = True):
        name, zone = identity["name"], identity["zone"]
        if identity["flavor"] == "gce":
            prefix, values = "/computeMetadata/v1/", {
                "instance/name": name, "instance/zone": f"projects/123456/zones/{zone}",
                "project/project-id": identity["project"],
                "instance/service-accounts/default/token": json.dumps(
                    {"access_token": f"fake-token-{name}", "expires_in": 3600, "token_type": "Bearer"}),
                **{f"instance/attributes/{k}": v for k, v in identity.get("attributes", {}).items()}}
        else:
            role = identity.get("role", "researchkit-vm")
            creds = {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAFAKEVMROLE", "SecretAccessKey": "vm-secret",
                     "Token": "vm-session-token", "Expiration": "2099-01-01T00:00:00Z", "LastUpdated": "2026-01-01T00:00:00Z"}
            prefix, values = "/latest/", {
                "meta-data/instance-id": identity["instance_id"], "user-data": identity.get("user_data", ""),
                "meta-data/placement/availability-zone": zone, "meta-data/placement/region": zone[:-1],
                "meta-data/iam/security-credentials/": role, "meta-data/iam/security-credentials": role,
                f"meta-data/iam/security-credentials/{role}": json.dumps(creds),
                "meta-data/iam/info": json.dumps({"Code": "Success", "InstanceProfileArn": f"arn:aws:iam::1:instance-profile/{role}"})}
        session = f"imds-token-{name}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: str = "") -> None:
                self.send_response(code)
                if identity["flavor"] == "gce":
                    self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self):  # IMDSv2 session token
                if identity["flavor"] == "aws" and self.path == "/latest/api/token":
                    self._reply(200, session)
                else:
                    self._reply(404)

            def do_GET(self):
                key = self.path.split("?")[0].removeprefix(prefix)
                if log_path:
                    with open(log_path, "a") as f:
                        f.write(f"{self.headers.get('Host')} {key}\n")
                if identity["flavor"] == "gce" and self.headers.get("Metadata-Flavor") != "Google":
                    return self._reply(403)
                if identity["flavor"] == "aws" and self.headers.get("X-aws-ec2-metadata-token") != session:
                    return self._reply(401)
                body = values.get(key)
                self._reply(200 if body is not None else 404, body or "")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):  # no getfqdn(): it can hang without DNS
                import socketserver

                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

        self.server = Server((host, port), Handler)
        self.base = f"http://{host}:{self.server.server_address[1]}"
        self.url = self.base + prefix.rstrip("/")
        if background:
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class VMNetwork:
    """A bridge for the fake VMs' namespaces; the emulators listen on its address."""

    def __init__(self, subnet: int | None = None):
        """On 10.213.`subnet`.0/24, or (None) the first such /24 no other bridge holds: test
        runs side by side (pytest-xdist's workers, two checkouts) each get their own."""
        self.bridge = f"rkbr{os.getpid() % 100000}"
        self.count = 0
        import fcntl

        with open("/run/lock/researchkit-test-bridges", "a") as lock:  # choosing and taking a /24 is one step
            fcntl.flock(lock, fcntl.LOCK_EX)
            if subnet is None:
                used = set(re.findall(r"inet 10\.213\.(\d+)\.", _ip("-o", "-4", "addr", "show").stdout))
                start = os.getpid() % 200
                subnet = next(s for s in (20 + (start + i) % 200 for i in range(200)) if str(s) not in used)
            self.prefix = f"10.213.{subnet}"
            self.host_ip = f"{self.prefix}.1"
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
        ns, host_if, vm_if = f"rkvm{tag}", f"rkh{tag}", f"rkv{tag}"
        addr = f"{self.prefix}.{10 + self.count % 240}"  # a /24: addresses come round again after 240 VMs
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


@dataclass
class VMImage:
    """A root filesystem to boot from: `layers` are overlay lower directories, the first on
    top (a variant's layer over the base image). `env` and `files` (absolute path in the VM ->
    content, put in each VM's own layer) point it at its package sources; for
    `dpkg_lock_seconds` after boot another process holds apt's locks, as unattended-upgrades
    does on a fresh cloud VM."""

    layers: tuple[Path, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    dpkg_lock_seconds: float = 0


class FakeVMs:
    """Boots VMs from startup scripts; with a VMNetwork each gets its own namespace, without,
    a plain process group. `api_env` is what the image needs to reach the emulators; `image`,
    a bare image to boot from instead of the host's root."""

    booted = {"netns": 0, "process": 0, "bare": 0}  # reported at the end of the test session

    def __init__(self, root: Path, api_env: dict[str, str], network: VMNetwork | None = None,
                 image: VMImage | None = None):
        if image is not None and network is None:
            raise ValueError("a VM booted from an image needs its own network namespace (a VMNetwork)")
        self.root, self.api_env, self.network, self.image = Path(root), api_env, network, image
        self.vms: dict[str, dict] = {}
        self.enforce_deadlines, self.minute_seconds = True, 60.0
        self.trace_startup = False  # bash's xtrace of the startup script, each line timed, into its log
        self.extra_bin: dict[str, str] = {}  # more commands on the VM's PATH (name -> script), e.g. nvidia-smi

    def boot(self, script: str, identity: dict) -> None:
        name = identity["name"]
        vm_root = self.root / name
        (vm_root / "bin").mkdir(parents=True)
        (vm_root / "home").mkdir()
        for shim in ("shutdown", "poweroff", "halt"):
            p = vm_root / "bin" / shim
            p.write_text(f"#!/bin/sh\necho \"{shim} $* @$(date +%s)\" >> '{vm_root}/poweroff'\n")
            p.chmod(0o755)
        for command, text in self.extra_bin.items():
            (vm_root / "bin" / command).write_text(text)
            (vm_root / "bin" / command).chmod(0o755)
        (vm_root / "startup-script").write_text(script)
        env = {"PATH": f"{vm_root / 'bin'}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
               "HOME": str(vm_root / "home"), "LANG": "C.UTF-8", "RK_VM_ROOT": str(vm_root / "var"), **self.api_env}
        if self.trace_startup:  # bash sources BASH_ENV first; as root it takes no PS4 from the environment
            (vm_root / "trace.sh").write_text(
                "if [[ $0 == */startup-script ]]; then PS4='+ ${EPOCHREALTIME} '; set -x; fi\n")
            env["BASH_ENV"] = str(vm_root / "trace.sh")
        vm = {"root": vm_root, "zone": identity["zone"], "console": open(vm_root / "console.log", "wb"),
              "meta": None, "net": None, "identity": identity}
        if self.network is None:
            vm["meta"] = MetadataServer(identity, log_path=str(vm_root / "metadata.log"))
            if identity["flavor"] == "gce":
                env["RK_METADATA_URL"] = vm["meta"].url
            else:
                env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = vm["meta"].base + "/"
            argv = ["bash", str(vm_root / "startup-script")]
            FakeVMs.booted["process"] += 1
        else:
            ns, host_if, _addr = self.network.add()
            vm["net"] = (ns, host_if)
            cfg = vm_root / "metadata.json"
            cfg.write_text(json.dumps({"identity": identity, "bind": "169.254.169.254", "port": 80,
                                       "log": str(vm_root / "metadata.log")}))
            vm["meta_proc"] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).with_name("metadata_server.py")), str(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=vm["console"],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
            (vm_root / "hosts").write_text("127.0.0.1 localhost\n169.254.169.254 metadata.google.internal metadata\n")
            if self.image is not None:
                env.update(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME="/root",
                           **self.image.env)
                argv = self._image_argv(ns, vm_root, name)
            else:
                argv = ["ip", "netns", "exec", ns, "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                        "--tmpfs", "/tmp", "--tmpfs", "/root", *_bind_back_python(),
                        "--bind", str(vm_root), str(vm_root), "--ro-bind", str(vm_root / "hosts"), "/etc/hosts",
                        "--unshare-uts", "--unshare-pid", "--hostname", name[:63], "--die-with-parent",
                        "--chdir", str(vm_root), "bash", str(vm_root / "startup-script")]
            _wait_until_listening(vm["meta_proc"], ns)
            FakeVMs.booted["netns"] += 1
            FakeVMs.booted["bare"] += self.image is not None
        vm["proc"] = subprocess.Popen(argv, cwd=vm_root, env=env, stdin=subprocess.DEVNULL, stdout=vm["console"],
                                      stderr=vm["console"], start_new_session=True)
        self.vms[name] = vm

    def _image_argv(self, ns: str, vm_root: Path, name: str) -> list[str]:
        """Boot from self.image: its layers under this VM's own writable layer, which starts
        with its /etc/hosts, its package sources, `shutdown`/`poweroff`/`halt` shims in
        /usr/sbin and the extra commands in /usr/local/bin. The overlay is mounted in a private mount namespace: it goes when the VM does."""
        image = self.image
        layer = self.root / ".layers" / name  # outside vm_root: the VM must not see its own layers
        upper, work, merged = layer / "upper", layer / "work", layer / "root"
        for d in (upper, work, merged):
            d.mkdir(parents=True)
        seed = {"/etc/hosts": (vm_root / "hosts").read_text(), "/etc/hostname": f"{name}\n", **image.files}
        for shim in ("shutdown", "poweroff", "halt"):
            seed[f"/usr/sbin/{shim}"] = (vm_root / "bin" / shim).read_text()
        for command, text in self.extra_bin.items():  # e.g. a fake nvidia-smi, where a driver image has it
            seed[f"/usr/local/bin/{command}"] = text
        for path, text in seed.items():
            target = upper / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o755 if path.startswith(("/usr/sbin/", "/usr/local/bin/")) else 0o644)
        if any(c in str(p) for p in (*image.layers, layer) for c in ",:"):  # mount -o's separators
            raise ValueError(f"overlay paths may hold no commas or colons: {image.layers}, {layer}")
        lower = ":".join(str(p) for p in image.layers)
        boot = ["bash", str(vm_root / "startup-script")]
        if image.dpkg_lock_seconds:
            (vm_root / "hold-dpkg-locks.py").write_text(_HOLD_DPKG_LOCKS)
            boot = ["sh", "-c", 'exec "$(ls /usr/bin/python3.[0-9]* | head -n 1)" "$@"', "hold",  # python3 may be gone
                    str(vm_root / "hold-dpkg-locks.py"), str(image.dpkg_lock_seconds), *boot]
        return ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
                "sh", "-c", 'mount -t overlay overlay -o "$1" "$2" && shift 2 && exec "$@"', "mount-layers",
                f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged),
                "bwrap", "--bind", str(merged), "/", "--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--tmpfs", "/tmp",  # apt's _apt user writes there
                "--bind", str(vm_root), str(vm_root), "--unshare-uts", "--unshare-pid", "--hostname", name[:63],
                "--die-with-parent", "--chdir", str(vm_root), *boot]

    def kill(self, name: str, zone: str | None = None, sig: int = signal.SIGKILL) -> None:
        vm = self.vms.get(name)
        if vm is None or (zone is not None and vm["zone"] != zone):
            return
        try:
            os.killpg(vm["proc"].pid, sig)
        except ProcessLookupError:
            pass

    def running(self, name: str) -> bool:
        vm = self.vms.get(name)
        return bool(vm) and vm["proc"].poll() is None

    def powered_off(self, name: str) -> bool:
        """The VM asked to power off now, or a `shutdown -h +N` it scheduled is due (N minutes
        of `minute_seconds` each; `enforce_deadlines = False` plays a VM where it never fires)."""
        p = self.vms[name]["root"] / "poweroff"
        if not p.exists():
            return False
        for line in p.read_text().splitlines():
            m = re.search(r" \+(\d+) .*@(\d+)$", line)
            if not m:
                return True
            if self.enforce_deadlines and time.time() >= int(m.group(2)) + int(m.group(1)) * self.minute_seconds:
                return True
        return False

    def consoles(self) -> str:
        return "; ".join(f"{n}: {(v['root'] / 'console.log').read_text()[-500:]}" for n, v in self.vms.items())

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


class GCEVMs(FakeVMs):
    """A VM per instance the fake Compute API inserts; its delete call ends it; powered off, it
    is TERMINATED."""

    def __init__(self, gce, root: Path, storage_env: dict[str, str], network: VMNetwork | None = None,
                 image: VMImage | None = None):
        super().__init__(root, {"RK_COMPUTE_API": f"{gce.url}/compute/v1", **storage_env}, network, image)
        self.gce = gce
        gce.on_insert = self.on_insert
        gce.on_delete = self.on_delete
        # VMs boot one at a time on one long-lived thread, as EC2VMs' poller does: booted from
        # the fake API's short-lived request threads, concurrently, some died in their first
        # millisecond (bwrap --die-with-parent follows the thread that started it).
        self.queue: queue.Queue = queue.Queue()
        self.deleted: set[tuple[str, str]] = set()  # (name, zone)
        self.boot_lock = threading.Lock()  # a deletion waits for a boot under way: nothing boots after it
        self.booter = threading.Thread(target=self._boot_queued, daemon=True)
        self.booter.start()

    def on_insert(self, project: str, zone: str, instance: dict) -> None:
        attrs = {i["key"]: i["value"] for i in instance.get("metadata", {}).get("items", [])}
        self.queue.put((attrs.get("startup-script", ""), {"flavor": "gce", "name": instance["name"], "zone": zone,
                                                           "project": project, "attributes": attrs}))

    def _boot_queued(self) -> None:
        while (item := self.queue.get()) is not None:
            script, identity = item
            with self.boot_lock:  # deleted (or preempted) before its turn came: nothing to boot
                with self.gce.lock:
                    exists = (identity["project"], identity["zone"], identity["name"]) in self.gce.instances
                if not exists or (identity["name"], identity["zone"]) in self.deleted:
                    continue
                self.boot(script, identity)
            threading.Thread(target=self._stopped_when_off, args=(identity,), daemon=True).start()

    def _stopped_when_off(self, identity: dict) -> None:
        """A VM that powers itself off (`shutdown -h now`) is TERMINATED, as on GCE: stopped, not deleted."""
        name = identity["name"]
        self.vms[name]["proc"].wait()
        if self.powered_off(name):
            key = (identity["project"], identity["zone"], name)
            with self.gce.lock:
                inst = self.gce.instances.get(key)
                if inst is not None and key not in self.gce.deleting:  # being deleted: STOPPING until gone
                    inst["status"] = "TERMINATED"

    def on_delete(self, project: str, zone: str, instance: dict) -> None:
        """Like GCE: the VM is shut down shortly after the API accepts the delete, and the
        deletion is done once it is down (only the instance in that zone: a half-made namesake
        elsewhere has no VM)."""
        name = instance["name"]
        with self.boot_lock:
            self.deleted.add((name, zone))
        time.sleep(0.5)
        self.kill(name, zone)
        vm = self.vms.get(name)
        if vm is not None and vm["zone"] == zone:
            vm["proc"].wait()

    def preempt(self, name: str) -> None:
        """The VM dies at once (no trap runs) and disappears from the API."""
        self.kill(name)
        with self.gce.lock:
            for key in [k for k in self.gce.instances if k[2] == name]:
                self.gce.instances.pop(key)

    def stop(self) -> None:
        self.queue.put(None)
        self.booter.join(timeout=30)
        super().stop()

    def wait_all_gone(self, timeout: float = 180) -> None:  # VMs boot one at a time; a loaded machine is slow
        end = time.time() + timeout
        while time.time() < end:
            if not self.gce.names() and self.queue.empty() and not any(self.running(n) for n in self.vms):
                return
            time.sleep(0.1)
        raise AssertionError(f"VMs still there after {timeout}s: {self.gce.names()}; consoles: {self.consoles()}")


class EC2VMs(FakeVMs):
    """moto runs no user data: a poller boots its new instances from their user data
    (gunzipped, as cloud-init does), and when a VM powers off, stops or terminates the
    instance as its InstanceInitiatedShutdownBehavior says. Instances terminated through
    the API lose their VM."""

    def __init__(self, ec2, root: Path, storage_env: dict[str, str], network: VMNetwork | None = None,
                 image: VMImage | None = None):
        super().__init__(root, storage_env, network, image)
        self.ec2 = ec2
        self.ids: dict[str, str] = {}  # name -> instance id
        self.terminated_by_shutdown: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import base64
        import gzip

        while not self._stop.wait(0.2):
            try:
                pages = self.ec2.describe_instances(Filters=[{"Name": "tag:researchkit-tool", "Values": ["researchkit"]}])
            except Exception:  # noqa: BLE001 - moto reset between tests
                continue
            for reservation in pages["Reservations"]:
                for inst in reservation["Instances"]:
                    name = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("Name", inst["InstanceId"])
                    state = inst["State"]["Name"]
                    if name not in self.vms and state in ("pending", "running"):
                        raw = self.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
                        data = base64.b64decode(raw["UserData"].get("Value", ""))
                        if data[:2] == b"\x1f\x8b":
                            data = gzip.decompress(data)
                        self.ids[name] = inst["InstanceId"]
                        self.boot(data.decode(), {"flavor": "aws", "name": name, "instance_id": inst["InstanceId"],
                                                  "zone": inst["Placement"]["AvailabilityZone"],
                                                  "user_data": data.decode()})
                    elif name in self.vms and state in ("shutting-down", "terminated", "stopped"):
                        self.kill(name)
                    elif name in self.vms and self.powered_off(name) and name not in self.terminated_by_shutdown:
                        self.kill(name)
                        behaviour = self.ec2.describe_instance_attribute(
                            InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
                        if behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate":
                            self.ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
                            self.terminated_by_shutdown.append(name)
                        else:
                            self.ec2.stop_instances(InstanceIds=[inst["InstanceId"]])

    def live(self) -> list[str]:
        pages = self.ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
        return [i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"]]

    def wait_all_gone(self, timeout: float = 180) -> None:  # VMs boot one at a time; a loaded machine is slow
        end = time.time() + timeout
        while time.time() < end:
            if not self.live() and not any(self.running(n) for n in self.vms):
                return
            time.sleep(0.1)
        raise AssertionError(f"instances still running after {timeout}s: {self.live()}; consoles: {self.consoles()}")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        super().stop()


# Run by the image's python3.X before the startup script: a child takes apt's locks (fcntl locks,
# which flock(1) cannot hold and a fork does not inherit), holds them for argv[1] seconds; once
# they are held, this process becomes the startup script.
_HOLD_DPKG_LOCKS = """import fcntl, os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    for path in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"):
        fcntl.lockf(os.open(path, os.O_RDWR | os.O_CREAT, 0o640), fcntl.LOCK_EX)
    os.write(w, b"held")
    os.close(w)
    time.sleep(float(sys.argv[1]))
    os._exit(0)
os.close(w)
os.read(r, 4)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _bind_back_python() -> list[str]:
    """The image's Python (a venv and the interpreter behind it) may live under /tmp or
    /root (pyenv), which the VM's own tmpfs mounts hide: bind them back, read-only."""
    out: list[str] = []
    for path in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if path.startswith(("/tmp/", "/root/")):
            out += ["--ro-bind", path, path]
    return out


def _wait_until_listening(proc: subprocess.Popen, ns: str, timeout: float = 10) -> None:
    """The metadata server says when it is bound. (It was probed by a Python started in the
    namespace every 50 ms: 236 starts, ~17 s of the suite's CPU.)"""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready or proc.stdout.readline() != b"listening\n":
        raise AssertionError(f"the metadata server in {ns} did not start (exit {proc.poll()}); see the VM's console.log")
    proc.stdout.close()
