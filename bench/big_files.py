"""Big result files: the VM's upload and the client's pull of two 1 GiB files, this tree against
an earlier one and against `aws s3 sync` and rclone, on the emulators (moto in its own process,
fake-gcs-server). Wall time and peak RSS (GNU time) of each.

  bench/big_files.py [--before REV] [--gib 1] [--files 2] [--repeat 1] [--clouds s3,gcs] [--pulls-only]
                     [--out bench/results]

The VM's upload runs the VM's own store (standard library, credentials from a fake metadata
server) in a process of its own; each pull goes into a fresh directory and is checked file by
file before its time counts. Writes big-files.md and big-files.json (--name) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "py")]

AWS = os.environ.get("RK_BENCH_AWS", "aws")
UPLOAD = r"""
import os, sys, json
from pathlib import Path
from fake_vm import MetadataServer
from researchkit_py.settings import Settings
from researchkit_py.storage.transfer import put_tree
cloud, url, src, prefix = sys.argv[1:5]
meta = MetadataServer({"flavor": "gce" if cloud == "gcs" else "aws", "name": "vm", "zone": "us-central1-a",
                       "project": "p", "instance_id": "i-1"})
env = dict(os.environ, RK_METADATA_URL=meta.url, AWS_EC2_METADATA_SERVICE_ENDPOINT=meta.base + "/")
if cloud == "gcs":
    from researchkit_py.clouds.gce.rest import GCSRestStore as S
else:
    from researchkit_py.clouds.ec2.rest import S3RestStore as S
store = S.open_url(url, Settings(environ=env, read_file=False))
stats = put_tree(store, Path(src), prefix)
print(json.dumps({"files": stats.files, "bytes": stats.bytes}))
"""


def timed(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, int, str, float]:
    """(wall seconds, peak RSS in MB, stdout, CPU seconds: user + system) of one command under GNU
    time. On a machine shared with other work, wall time measures the others too."""
    with tempfile.NamedTemporaryFile("r") as out:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", out.name, *argv], env=env, cwd=cwd,
                           capture_output=True, text=True)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv[:4])} … failed ({r.returncode}): {r.stderr.strip()[-600:]}")
        rss, user, system = out.read().split()[-3:]
        return took, int(rss) // 1024, r.stdout, float(user) + float(system)


def make_files(root: Path, n: int, gib: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with open(root / f"checkpoint-{i}.bin", "wb") as f:
            left = int(gib * (1 << 30))
            while left:
                chunk = os.urandom(min(left, 64 << 20))
                f.write(chunk)
                left -= len(chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="324fae1")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--clouds", default="s3,gcs", help="the buckets to measure: s3, gcs or both")
    ap.add_argument("--pulls-only", action="store_true", help="upload once (this tree, not timed); time the pulls")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--name", default="big-files", help="the report's name in --out (NAME.md, NAME.json)")
    args = ap.parse_args()

    from emulate import prepare_ec2
    from emulators import FakeGCS, MotoProcess
    from fake_gce import FakeGCE
    from suite import check_tree, code_tree, rclone_environment, versions

    from researchkit_py import protocol
    from researchkit_py.storage.transfer import tree_manifest

    scratch = Path(tempfile.mkdtemp(prefix="rk-big-bench-"))
    moto, gcs, gce = MotoProcess(), FakeGCS(), FakeGCE()
    rows: list[dict] = []
    try:
        exports = prepare_ec2(moto.url)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        from researchkit_py.clouds.gce.store import gcs_client
        from researchkit_py.clouds.registry import open_store

        gcs_client().create_bucket("bench-big")
        s3_bucket = exports["RK_BUCKET"].removeprefix("s3://").split("/")[0]
        env = {**os.environ, **exports, "HOME": str(scratch), "RK_STATE_HOME": str(scratch / "state"),
               "RK_NO_PROGRESS": "1", "GCE_PROJECT": "bench", "RK_GCE_API_ENDPOINT": gce.url}
        codes = {"this tree": REPO}
        if args.before:
            codes = {f"before ({args.before})": code_tree(args.before, scratch), **codes}
        src = scratch / "results"
        print(f"bench: writing {args.files} files of {args.gib:g} GiB", file=sys.stderr, flush=True)
        make_files(src, args.files, args.gib)
        manifest = tree_manifest(src)
        total = sum(e["size"] for e in manifest)
        rclone_env = rclone_environment(env, moto.url, gcs.url)

        def record(group: str, tool: str, took: float, rss: int, cpu: float) -> None:
            row = next((r for r in rows if r["group"] == group and r["tool"] == tool), None)
            if row is None:
                row = {"group": group, "tool": tool, "seconds": [], "rss_mb": [], "cpu_s": []}
                rows.append(row)
            row["seconds"].append(round(took, 2))
            row["rss_mb"].append(rss)
            row["cpu_s"].append(round(cpu, 2))

        for cloud, url, backend in (("s3", f"s3://{s3_bucket}/researchkit", "ec2"),
                                    ("gcs", "gs://bench-big/researchkit", "gce")):
            if cloud not in args.clouds.split(","):
                continue
            store = open_store(url)
            run_id = protocol.new_run_id("big")
            prefix = protocol.run_prefix(run_id)
            group_up, group_pull = f"VM upload, {cloud}", f"pull, {cloud}"
            uploads = {"this tree": REPO} if args.pulls_only else codes
            for i in range(1 if args.pulls_only else args.repeat):
                for name, code in uploads.items():
                    print(f"bench: {group_up}: {name}", file=sys.stderr, flush=True)
                    up_env = {**env, "PYTHONPATH": os.pathsep.join([str(code), str(REPO / "tests" / "py")])}
                    took, rss, _, cpu = timed([sys.executable, "-c", UPLOAD, cloud, url, str(src), f"{prefix}/results"],
                                              up_env, cwd=scratch)
                    if not args.pulls_only:
                        record(group_up, f"VM store, {name}", took, rss, cpu)
                    if i + 1 < args.repeat and not args.pulls_only or name != list(uploads)[-1]:
                        for e in manifest:
                            store.delete(f"{prefix}/results/{e['path']}")
            at = time.time()
            store.write_json(f"{prefix}/manifest.json", protocol.RunManifest(
                run_id=run_id, provider=backend, instance=protocol.instance_name(run_id), command="bench",
                bundle="bundles/none", created_at=protocol.iso(at), expires_at=protocol.iso(at + 3600), max_hours=1,
                heartbeat_seconds=30).to_dict())
            store.put_bytes(f"{prefix}/logs/run.log", b"researchkit: DONE\n")
            store.write_json(f"{prefix}/results.manifest.json", {"run_id": run_id, "files": manifest, "packs": []})
            store.write_json(f"{prefix}/status.json", {"run_id": run_id, "phase": "DONE", "exit_code": 0, "cause": "exit"})
            tools = {f"cloud-run pull, {name}": [str(code / "tools" / "cloud-run"), "pull", run_id, "--backend", backend,
                                                  "--json", "--output-dir", "{out}"] for name, code in codes.items()}
            if cloud == "s3":
                tools["aws s3 sync"] = [AWS, "s3", "sync", f"s3://{s3_bucket}/researchkit/runs/{run_id}/results/",
                                        "{out}", "--endpoint-url", moto.url, "--only-show-errors", "--no-progress"]
            remote = (f"bs3:{s3_bucket}" if cloud == "s3" else "bgcs:bench-big") + f"/researchkit/runs/{run_id}/results"
            if shutil.which("rclone"):
                tools["rclone copy"] = ["rclone", "copy", remote, "{out}"]
                tools["rclone copy --transfers 16"] = ["rclone", "copy", "--transfers", "16", "--multi-thread-streams",
                                                       "16", remote, "{out}"]
            for _ in range(args.repeat):
                for tool, argv in tools.items():
                    print(f"bench: {group_pull}: {tool}", file=sys.stderr, flush=True)
                    out = scratch / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    pull_env = rclone_env if argv[0] == "rclone" else {
                        **env, "RK_BUCKET": url if cloud == "gcs" else env["RK_BUCKET"]}
                    took, rss, _, cpu = timed([str(out) if a == "{out}" else a for a in argv], pull_env, cwd=scratch)
                    check_tree(out, src)
                    record(group_pull, tool, took, rss, cpu)
            for e in manifest:
                store.delete(f"{prefix}/results/{e['path']}")
        meta = versions()
    finally:
        for server in (moto, gcs, gce):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    lines = ["| group | tool | median (s) | MB/s | peak RSS (MB) | CPU, median (s) | runs (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        med = statistics.median(r["seconds"])
        r["median_s"], r["median_cpu_s"] = med, statistics.median(r["cpu_s"])
        lines.append(f"| {r['group']} | {r['tool']} | {med:.2f} | {total / 1e6 / med:.0f} | {max(r['rss_mb'])} | "
                     f"{r['median_cpu_s']:.2f} | {', '.join(map(str, r['seconds']))} |")
    ratios = []
    for cloud in ("s3", "gcs"):
        ours = next((r for r in rows if r["group"] == f"pull, {cloud}" and r["tool"] == "cloud-run pull, this tree"), None)
        peers = [r for r in rows if r["group"] == f"pull, {cloud}" and not r["tool"].startswith("cloud-run")]
        if ours and peers:
            best = min(peers, key=lambda r: r["median_s"])
            ratios.append(f"- pull, {cloud}: cloud-run pull {ours['median_s']:.2f} s vs the faster peer ({best['tool']}) "
                          f"{best['median_s']:.2f} s → {best['median_s'] / ours['median_s']:.2f}×; CPU "
                          f"{ours['median_cpu_s']:.2f} s vs {best['median_cpu_s']:.2f} s")
    text = (f"# Big files: {args.files} × {args.gib:g} GiB\n\n{time.strftime('%Y-%m-%d')}, {platform.node()}, "
            f"{os.cpu_count()} cores. Peers: {'' if args.clouds == 'gcs' else meta['awscli'] + '; '}{meta['rclone']}. "
            f"Emulators: {'' if args.clouds == 'gcs' else 'moto ' + meta['moto'] + ' (its own process), '}"
            f"fake-gcs-server (in memory). Medians of {args.repeat}.\n\n" + "\n".join(lines)
            + "\n\n" + "\n".join(ratios) + "\n")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.md").write_text(text)
    (out_dir / f"{args.name}.json").write_text(json.dumps({"rows": rows, "bytes": total}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
