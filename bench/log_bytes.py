"""A run's log in the bucket: bytes moved and follow latency, this tree against an earlier one.

  bench/log_bytes.py [--before REV] [--mb 50] [--beats 60] [--heartbeat 2] [--poll 0.5] [--out bench/results]

A VM agent (in this process, its own HTTP and credentials from a fake metadata server, as on a
cloud VM) writes --mb MB of log over --beats heartbeats while a client follows it (`wait`, the
code behind `logs --follow`); every byte either moves goes through a counting proxy in front of
the emulator (fake-gcs-server, moto). Each line carries when it was written, so the follower
measures how long a line took to show. The code measured is this tree's and --before's
(`git archive`, default main's 324fae1), each in a process of its own: before/after, one run.
Writes log-bytes.md and log-bytes.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


class CountingProxy:
    """A TCP proxy in front of an emulator that counts the bytes each way."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.up = self.down = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(1 << 20):
                with self.lock:
                    setattr(self, way, getattr(self, way) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Shown:
    """sys.stderr for the follower: notes when each MARK line shows."""

    def __init__(self):
        self.partial, self.latency, self.bytes = "", {}, 0

    def write(self, text: str) -> int:
        now = time.time()
        self.bytes += len(text)
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.startswith("MARK "):
                _, i, at = line.split()[:3]
                self.latency[int(i)] = now - float(at)
        return len(text)

    def flush(self) -> None:
        pass


def one(cloud: str, mb: float, beats: int, heartbeat: float, poll: float) -> dict:
    """One run in this process, with the researchkit_py first on sys.path."""
    from emulators import FakeGCS, Moto
    from fake_vm import MetadataServer

    from researchkit_py import protocol
    from researchkit_py.clouds.registry import open_store
    from researchkit_py.lifecycle import monitor
    from researchkit_py.settings import Settings
    from researchkit_py.vm_agent import Agent, VMEnv

    scratch = Path(tempfile.mkdtemp(prefix="rk-log-bench-"))
    emulator = FakeGCS() if cloud == "gcs" else Moto()
    vm_proxy, client_proxy = CountingProxy(emulator.url), CountingProxy(emulator.url)
    flavor = "gce" if cloud == "gcs" else "aws"
    meta = MetadataServer({"flavor": flavor, "name": "vm", "zone": "us-central1-a", "project": "p", "instance_id": "i-1"})
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RK_", "STORAGE_EMULATOR", "AWS_"))}
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    if cloud == "gcs":
        client_env = {**base, "STORAGE_EMULATOR_HOST": client_proxy.url}
        vm_env = {**base, "STORAGE_EMULATOR_HOST": vm_proxy.url, "RK_METADATA_URL": meta.url}
        mod = "gce"
    else:
        client_env = {**base, **creds, "AWS_ENDPOINT_URL": client_proxy.url}
        vm_env = {**base, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": vm_proxy.url,
                  "AWS_EC2_METADATA_SERVICE_ENDPOINT": meta.base + "/"}
        mod = "ec2"
    os.environ.update({k: v for k, v in creds.items()})
    settings = Settings(environ=client_env, read_file=False)
    bucket = f"bench-{os.getpid()}"
    if cloud == "gcs":
        from researchkit_py.clouds.gce.store import gcs_client

        gcs_client(settings).create_bucket(bucket)
    else:
        from researchkit_py.clouds.ec2.aws import aws_client

        aws_client("s3", settings).create_bucket(Bucket=bucket)
    url = f"{'gs' if cloud == 'gcs' else 's3'}://{bucket}/rk"
    store = open_store(url, settings)
    run_id = protocol.new_run_id("logbench")
    now = time.time()
    store.write_json(protocol.run_key(run_id, protocol.MANIFEST), {
        "run_id": run_id, "instance": "i-1", "provider": "bench", "created_at": protocol.iso(now),
        "expires_at": protocol.iso(now + 3600), "heartbeat_seconds": heartbeat, "command": "bench"})
    root = scratch / "vm"
    root.mkdir()
    agent = Agent(VMEnv(run_id, url, f"researchkit_py.clouds.{mod}.vm:VMBucket",
                        f"researchkit_py.clouds.{mod}.rest:{'GCSRestStore' if mod == 'gce' else 'S3RestStore'}",
                        root, mod, vm_env))
    per_beat = int(mb * 1e6 / beats)
    line = "x" * 99 + "\n"
    errors: list[str] = []

    def vm() -> None:
        try:
            agent.write_status(protocol.RUN)
            for i in range(beats):
                with open(agent.log_path, "a") as f:
                    f.write(line * (per_beat // len(line)))
                    f.write(f"MARK {i} {time.time():.6f}\n")
                time.sleep(heartbeat)
                agent.heartbeat()
            agent.finish(protocol.RUN, "0", protocol.EXIT)
        except Exception as e:  # noqa: BLE001 - reported in the row
            errors.append(f"{e.__class__.__name__}: {e}")
            agent.write_status(protocol.FAILED)

    shown = Shown()
    ctx = SimpleNamespace(store=store, settings=settings, poll_seconds=lambda: poll,
                          provider=SimpleNamespace(name="bench", get=lambda name: SimpleNamespace(alive=True)))
    writer = threading.Thread(target=vm)
    started = time.time()
    writer.start()
    real, sys.stderr = sys.stderr, shown
    try:
        monitor.wait(ctx, run_id)
    finally:
        sys.stderr = real
    writer.join()
    took = time.time() - started
    size = agent.log_path.stat().st_size
    moved = {"vm_up": vm_proxy.up, "vm_down": vm_proxy.down, "client_up": client_proxy.up,
             "client_down": client_proxy.down}  # before the check below reads the log once more
    same = store.get_bytes(protocol.run_key(run_id, protocol.LOG)) == agent.log_path.read_bytes()
    lat = [shown.latency[i] for i in sorted(shown.latency)]
    for s in (meta, emulator):
        s.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    import researchkit_py

    return {"cloud": cloud, "code_dir": str(Path(researchkit_py.__file__).parent), "log_bytes": size, "final_log_is_the_log": same,
            **moved, "lines_shown": len(lat), "beats": beats, "heartbeat_s": heartbeat,
            "poll_s": poll, "follow_median_s": statistics.median(lat) if lat else None,
            "follow_max_s": max(lat) if lat else None, "seconds": took, "errors": errors}


def child(code: Path, args: argparse.Namespace, cloud: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO / "tests" / "py")])}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", cloud, "--mb", str(args.mb),
            "--beats", str(args.beats), "--heartbeat", str(args.heartbeat), "--poll", str(args.poll)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=code)
    if r.returncode != 0:
        raise SystemExit(f"bench: the {cloud} run of {code} failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    out = ["| cloud | code | log | VM up (× log) | follower down (× log) | follow latency median / max "
           "(heartbeats) | final log = the VM's |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        hb = r["heartbeat_s"]
        out.append(f"| {r['cloud']} | {r['code']} | {r['log_bytes'] / 1e6:.1f} MB | "
                   f"{r['vm_up'] / 1e6:.1f} MB ({r['vm_up'] / r['log_bytes']:.2f}×) | "
                   f"{r['client_down'] / 1e6:.1f} MB ({r['client_down'] / r['log_bytes']:.2f}×) | "
                   f"{r['follow_median_s'] / hb:.2f} / {r['follow_max_s'] / hb:.2f} "
                   f"({r['follow_median_s']:.1f} / {r['follow_max_s']:.1f} s) | "
                   f"{'yes' if r['final_log_is_the_log'] else 'NO'}{'; ' + r['errors'][0] if r['errors'] else ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="324fae1", help="the earlier code (a git revision); '' for none")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--beats", type=int, default=60)
    ap.add_argument("--heartbeat", type=float, default=2.0)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--clouds", default="gcs,s3")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.mb, args.beats, args.heartbeat, args.poll)))
        return
    codes = {"this tree": REPO}
    tmp = Path(tempfile.mkdtemp(prefix="rk-log-before-"))
    if args.before:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "researchkit_py"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        codes = {f"before ({args.before})": tmp, **codes}
    rows = []
    for cloud in args.clouds.split(","):
        for name, code in codes.items():
            print(f"bench: {cloud}, {name} …", file=sys.stderr, flush=True)
            rows.append({"code": name, **child(code, args, cloud)})
    shutil.rmtree(tmp, ignore_errors=True)
    text = (f"# A run's log: bytes moved and follow latency\n\n{time.strftime('%Y-%m-%d')}, {platform.node()}, "
            f"{os.cpu_count()} cores; {args.mb:g} MB of log over {args.beats} heartbeats of {args.heartbeat:g} s, "
            f"the follower polling every {args.poll:g} s, against the emulators (bytes counted by a proxy: "
            f"bodies and headers).\n\n{table(rows)}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log-bytes.md").write_text(text)
    (out / "log-bytes.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
