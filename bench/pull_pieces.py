"""How the size of a pull's ranged reads plays on moto: the S3 pull of big files with pieces of
several sizes (and one GET per file), beside rclone's plan for the same files, with the
emulator's own CPU time for each.

  bench/pull_pieces.py [--mib 512] [--files 2] [--pieces whole,256,64] [--repeat 2] [--out bench/results]

moto (in a process of its own) holds each object in one buffer and reads all of it under the
object's lock for every ranged GET; real S3 serves a range alone. The moto CPU column shows
what each plan costs the emulator, so a time can be read as the client's or the emulator's.
The pull is storage.transfer.pull_tree with the client's store (boto3), its piece size set
for the run (transfer.PIECE); rclone runs with its defaults and -vv, whose log gives its plan.
Writes pull-pieces.md and pull-pieces.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "py"), str(REPO / "bench")]
MIB = 1 << 20


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--pieces", default="whole,256,64")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    from emulators import MotoProcess
    from suite import check_tree, rclone_environment, versions

    moto = MotoProcess()
    os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_REGION="us-east-1", RK_NO_PROGRESS="1")
    from researchkit_py.clouds.ec2.aws import aws_client
    from researchkit_py.clouds.registry import open_store
    from researchkit_py.storage import transfer

    scratch = Path(tempfile.mkdtemp(prefix="rk-pieces-"))
    rows: dict[str, dict] = {}
    try:
        aws_client("s3").create_bucket(Bucket="bench-pieces")
        src = scratch / "src"
        src.mkdir()
        for i in range(args.files):
            with open(src / f"checkpoint-{i}.bin", "wb") as f:
                for _ in range(max(1, args.mib // 64)):
                    f.write(os.urandom(64 * MIB))
        manifest = transfer.tree_manifest(src)
        store = open_store("s3://bench-pieces/p")
        for e in manifest:
            store.put_file(src / e["path"], f"r/{e['path']}")
        rclone_env = rclone_environment(dict(os.environ), moto.url, "http://127.0.0.1:9")
        plans = [p.strip() for p in args.pieces.split(",")] + (["rclone"] if shutil.which("rclone") else [])
        for _ in range(args.repeat):
            for plan in plans:
                out = scratch / "out"
                shutil.rmtree(out, ignore_errors=True)
                m0, c0, t0 = proc_cpu(moto.proc.pid), own_cpu(), time.perf_counter()
                if plan == "rclone":
                    r = subprocess.run(["rclone", "copy", "-vv", "bs3:bench-pieces/p/r", str(out)], env=rclone_env,
                                       capture_output=True, text=True, check=True)
                    said = sorted({line.split(": ", 2)[-1] for line in r.stderr.splitlines()
                                   if "Starting multi-thread copy" in line})
                    name, client = "rclone copy (its defaults)", None
                else:
                    transfer.PIECE = 1 << 50 if plan == "whole" else int(plan) * MIB
                    transfer.pull_tree(store, "r", out, expected=manifest)
                    name = "pull_tree, one GET a file" if plan == "whole" else f"pull_tree, {plan} MiB pieces"
                    pieces = -(-args.mib * MIB // transfer.PIECE) if plan != "whole" else 1
                    said, client = [f"{pieces} range(s) a file, up to {store.threads} side by side"], own_cpu() - c0
                took, emulator = time.perf_counter() - t0, proc_cpu(moto.proc.pid) - m0
                check_tree(out, src)
                row = rows.setdefault(name, {"tool": name, "seconds": [], "client_cpu_s": [], "moto_cpu_s": [],
                                             "plan": said})
                row["seconds"].append(round(took, 2))
                row["moto_cpu_s"].append(round(emulator, 2))
                if client is not None:
                    row["client_cpu_s"].append(round(client, 2))
                print(f"bench: {name}: {took:.2f} s, moto {emulator:.2f} s CPU", file=sys.stderr, flush=True)
        meta = versions()
    finally:
        moto.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    lines = ["| tool (pull_tree: what `cloud-run pull` runs, in process) | plan | median (s) | client CPU (s) | moto CPU (s) "
             "| runs (s) |", "|---|---|---:|---:|---:|---|"]
    for r in rows.values():
        r["median_s"] = statistics.median(r["seconds"])
        cpu = f"{statistics.median(r['client_cpu_s']):.2f}" if r["client_cpu_s"] else "—"
        lines.append(f"| {r['tool']} | {'; '.join(r['plan'])} | {r['median_s']:.2f} | {cpu} | "
                     f"{statistics.median(r['moto_cpu_s']):.2f} | {', '.join(map(str, r['seconds']))} |")
    text = (f"# S3 pull of big files: the size of the ranged reads, on moto\n\n{time.strftime('%Y-%m-%d')}, "
            f"{platform.node()}, {os.cpu_count()} cores (shared); {args.files} × {args.mib} MiB; moto {meta['moto']} "
            f"in its own process; {meta['rclone']}. Medians of {args.repeat}.\n\n" + "\n".join(lines) + "\n")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pull-pieces.md").write_text(text)
    (out_dir / "pull-pieces.json").write_text(json.dumps(list(rows.values()), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
