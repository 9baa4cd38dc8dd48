"""researchkit's pulls, launches and CLI against the tools a user would otherwise use, side by
side in one run on this machine's emulators (moto for S3 and EC2, fake-gcs-server for GCS,
our fake Compute API for GCE).

  bench/run [--repeat 3] [--scale 200,2000,20000] [--out bench/results]
  bench/suite.py --only gcs-pull|s3-pull [--before REV] [--small 2000] [--big 5]

Prints a markdown table (medians of --repeat runs, and the ratios) and writes latest.md,
latest.json and scaling.png into --out; `--only gcs-pull` (`s3-pull`) measures the GCS (S3)
pulls alone (with `--before`, an earlier revision's pull beside this tree's) into gcs-pull.md
and gcs-pull.json (s3-pull.md, .json). Every tool pulls the same run prefix into a fresh
directory, then again into the same directory (the no-op re-pull); every pulled tree is
checked file by file before its time counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "py")]

from emulate import prepare_ec2  # noqa: E402
from emulators import FakeGCS, MotoProcess  # noqa: E402
from fake_gce import FakeGCE  # noqa: E402

CLOUD_RUN = str(REPO / "tools" / "cloud-run")
AWS = os.environ.get("RK_BENCH_AWS", "aws")
OUT = "{out}"  # stands for each measurement's fresh output directory


@dataclass
class Row:
    group: str
    measure: str
    values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)


class Bench:
    def __init__(self, scratch: Path, env: dict[str, str]):
        self.scratch, self.env = scratch, env
        self.rows: dict[tuple[str, str], Row] = {}
        self.cpu = 0.0

    def record(self, group: str, measure: str, seconds: float, note: str = "") -> None:
        row = self.rows.setdefault((group, measure), Row(group, measure))
        row.values.append(seconds)
        row.note = note or row.note

    def median(self, group: str, measure: str) -> float:
        return self.rows[(group, measure)].median

    def timed(self, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str]:
        """(wall seconds, stdout); `self.cpu`, the CPU seconds (user + system) it and its children
        used: on a machine shared with other work, wall time measures the others too."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env or self.env, cwd=cwd, capture_output=True, text=True)
        took = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv[:4])} … failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return took, r.stdout

    def fresh(self, name: str) -> Path:
        d = self.scratch / "out" / name
        shutil.rmtree(d, ignore_errors=True)
        d.parent.mkdir(parents=True, exist_ok=True)
        return d


# --- data ------------------------------------------------------------------------------
def rclone_environment(env: dict[str, str], s3_url: str, gcs_url: str) -> dict[str, str]:
    """`env` with rclone's remotes bs3: (the S3 emulator) and bgcs: (the GCS emulator)."""
    out = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}  # rclone cannot load one over plain http
    out.update(RCLONE_CONFIG_BS3_TYPE="s3", RCLONE_CONFIG_BS3_PROVIDER="Other", RCLONE_CONFIG_BS3_ENDPOINT=s3_url,
               RCLONE_CONFIG_BS3_REGION="us-east-1", RCLONE_CONFIG_BS3_ACCESS_KEY_ID=env["AWS_ACCESS_KEY_ID"],
               RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY=env["AWS_SECRET_ACCESS_KEY"],
               RCLONE_CONFIG_BGCS_TYPE="google cloud storage", RCLONE_CONFIG_BGCS_ANONYMOUS="true",
               RCLONE_CONFIG_BGCS_ENDPOINT=f"{gcs_url}/storage/v1/")
    return out


def make_results(root: Path, small: int, big: int, seed: int) -> tuple[int, int]:
    """`small` files of 1–64 KB in directories of 100, plus `big` files of 20 MB."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(small):
        p = root / f"d{i // 100:03d}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(1024, 64 * 1024)
        p.write_bytes(os.urandom(size))
        total += size
    for i in range(big):
        (root / f"model-{i}.bin").write_bytes(os.urandom(20 << 20))
        total += 20 << 20
    return small + big, total


def seed_run(store, provider: str, src: Path, scratch: Path, packs: bool = True) -> str:
    """A finished run record whose results are `src`, laid out exactly as the VM agent leaves it."""
    from researchkit_py import protocol
    from researchkit_py.storage.transfer import put_results, put_tree, tree_manifest

    run_id = protocol.new_run_id("bench")
    prefix = protocol.run_prefix(run_id)
    if packs:
        results, _ = put_results(store, src, prefix, scratch / run_id)
    else:
        put_tree(store, src, f"{prefix}/results")
        results = {"files": tree_manifest(src), "packs": []}
    at = time.time()
    manifest = protocol.RunManifest(run_id=run_id, provider=provider, instance=protocol.instance_name(run_id), command="bench",
                                bundle="bundles/none", created_at=protocol.iso(at), expires_at=protocol.iso(at + 3600),
                                max_hours=1, heartbeat_seconds=30)
    store.write_json(f"{prefix}/manifest.json", manifest.to_dict())
    store.put_bytes(f"{prefix}/logs/run.log", b"researchkit: DONE (command exited 0)\n")
    store.write_json(f"{prefix}/results.manifest.json", {"run_id": run_id, **results})
    store.write_json(f"{prefix}/status.json", {"run_id": run_id, "phase": "DONE", "exit_code": 0, "cause": "exit"})
    return run_id


def code_tree(rev: str, scratch: Path) -> Path:
    """The package and tools at `rev`, with this checkout's .venv."""
    dest = scratch / f"code-{rev}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "researchkit_py", "tools"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def check_tree(got: Path, want: Path) -> None:
    """Every file of `want` is in `got` with the same bytes (a pull that misses one does not count)."""
    from researchkit_py.storage.transfer import tree_manifest

    have = {e["path"]: e["sha256"] for e in tree_manifest(got) if not e["path"].startswith(".cloud-run")}
    need = {e["path"]: e["sha256"] for e in tree_manifest(want)}
    if have != need:
        missing = sorted(set(need) - set(have))[:3]
        raise SystemExit(f"bench: {got} differs from the run's results (e.g. {missing}); the measurement is void")


# --- the measurements ------------------------------------------------------------------
def pulls(b: Bench, *, group: str, peers: dict[str, list[str]], ours: list[str], src: Path, env: dict,
          rclone_env: dict, repeat: int, extra: dict[str, list[str]] | None = None) -> None:
    """Each tool into a fresh directory (OUT in its argv), then again into the same one; tools
    interleaved per round, so that a slow spell of the machine does not fall on one tool."""
    tools = {"cloud-run pull": ours, **(extra or {}), **peers}
    for i in range(repeat):
        for name, argv in tools.items():
            out = b.fresh(f"{group}-{name}-{i}".replace(" ", "_"))
            argv = [str(out) if a == OUT else a for a in argv]
            first, _ = b.timed(argv, rclone_env if argv[0] == "rclone" else env)
            first_cpu = b.cpu
            check_tree(out, src)
            again, stdout2 = b.timed(argv, rclone_env if argv[0] == "rclone" else env)
            b.record(group, f"{name}, first", first)
            b.record(group, f"{name}, unchanged re-pull", again)
            b.record(f"{group}, CPU seconds", f"{name}, first", first_cpu, "user + system, the emulator's not counted")
            b.record(f"{group}, CPU seconds", f"{name}, unchanged re-pull", b.cpu)
            if argv[0] == CLOUD_RUN and json.loads(stdout2)["bytes"] != 0:
                raise SystemExit(f"bench: the re-pull by {name} downloaded bytes; it should download none")


def cli_latency(b: Bench, repeat: int) -> None:
    for _ in range(max(5, repeat)):
        b.record("CLI", "./experiment.sh help", b.timed([str(REPO / "experiment.sh"), "help"])[0], "goal ≤ 0.050 s")
        b.record("CLI", "tools/cloud-run --help", b.timed([CLOUD_RUN, "--help"])[0], "goal ≤ 0.300 s")


def embedded(b: Bench, proj: Path, repeat: int) -> None:
    env = {**b.env, "COMPUTE_TARGET": "local", "RK_BUCKET": "", "EXP_PROJECT_ROOT": str(proj)}
    sleep = 1.0
    for i in range(repeat):
        total, _ = b.timed([CLOUD_RUN, "run", f"sleep {sleep}", "--backend", "local", "--quiet",
                            "--output-dir", str(b.fresh(f"embedded-{i}"))], env, cwd=proj)
        b.record("embedded provider", "launch → results local, minus the command's 1 s", total - sleep, "goal ≤ 2 s")


def relaunch(b: Bench, proj: Path, repeat: int) -> list[int]:
    """Two launches of the same code on EC2 (moto; the instances are not booted): bytes of
    code sent and time from command to instance requested (`run --detach` returns then)."""
    env = {**b.env, "EXP_PROJECT_ROOT": str(proj)}
    sent = []
    for i in range(repeat):
        (proj / "train.py").write_text(f"print('variant {i} of the code')\n")  # new code each round
        for which in ("first launch (new code)", "relaunch (unchanged code)"):
            took, out = b.timed([CLOUD_RUN, "run", "python3 train.py", "--backend", "ec2", "--detach", "--json"],
                                env, cwd=proj)
            info = json.loads(out)
            sent.append(info["code_uploaded_bytes"])
            b.record("relaunch", f"{which}: command → instance requested", took,
                     f"code sent: {info['code_uploaded_bytes']} bytes")
            b.timed([CLOUD_RUN, "terminate", info["run_id"], "--backend", "ec2"], env, cwd=proj)
    return sent


def scaling(b: Bench, store, sizes: list[int], repeat: int) -> list[dict]:
    points = []
    for n in sizes:
        src = b.scratch / f"scale-{n}"
        count, size = make_results(src, n, 0, seed=n)
        run_id = seed_run(store, "ec2", src, b.scratch / "packs")
        for i in range(repeat):
            out = b.fresh(f"scale-{n}-{i}")
            took, _ = b.timed([CLOUD_RUN, "pull", run_id, "--backend", "ec2", "--output-dir", str(out), "--json"])
            check_tree(out, src)
            b.record("scaling (S3, small files)", f"cloud-run pull, {n} files", took)
        shutil.rmtree(src)
        points.append({"files": count, "bytes": size, "seconds": b.median("scaling (S3, small files)",
                                                                           f"cloud-run pull, {n} files")})
    return points


# --- report ----------------------------------------------------------------------------
def versions() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not installed"

    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"machine": f"{os.cpu_count()} cores, {cpu}", "os": platform.platform(), "python": platform.python_version(),
            "moto": version("moto"), "boto3": version("boto3"), "google-cloud-storage": version("google-cloud-storage"),
            "awscli": out([AWS, "--version"]), "rclone": out(["rclone", "version"])}


def ratios(b: Bench) -> list[str]:
    lines = []
    for group, peers in (("pull, S3 (moto)", ("aws s3 sync", "rclone copy", "rclone copy --transfers 16")),
                         ("pull, GCS (fake-gcs-server)", ("rclone copy", "rclone copy --transfers 16"))):
        if (group, "cloud-run pull, first") not in b.rows:
            continue
        ours = b.median(group, "cloud-run pull, first")
        before = next((m.removesuffix(", first") for g, m in b.rows if g == group and m.startswith("cloud-run pull, before")
                       and m.endswith(", first")), None)
        if before:  # an earlier revision, measured in the same rounds
            was, was_again = b.median(group, f"{before}, first"), b.median(group, f"{before}, unchanged re-pull")
            lines.append(f"{group}: {before.removeprefix('cloud-run pull, ')} {was:.2f} s → this tree {ours:.2f} s "
                         f"(first pull); unchanged re-pull {was_again:.3f} s ({100 * was_again / was:.1f}% of its first)")
        for peer in peers:
            if (group, f"{peer}, first") in b.rows:
                theirs = b.median(group, f"{peer}, first")
                verdict = f"{theirs / ours:.1f}× faster" if theirs >= ours else f"{ours / theirs:.1f}× SLOWER"
                lines.append(f"{group}: cloud-run pull {ours:.2f} s vs {peer} {theirs:.2f} s → {verdict}")
        again = b.median(group, "cloud-run pull, unchanged re-pull")
        lines.append(f"{group}: unchanged re-pull {again:.3f} s = {100 * again / ours:.1f}% of the first pull, 0 bytes")
        cpu = f"{group}, CPU seconds"
        if (cpu, "cloud-run pull, first") in b.rows:
            mine = b.median(cpu, "cloud-run pull, first")
            others = [(p, b.median(cpu, f"{p}, first")) for p in peers if (cpu, f"{p}, first") in b.rows]
            lines.append(f"{group}, CPU: cloud-run pull {mine:.2f} s" + "".join(
                f"; {p} {t:.2f} s ({t / mine:.1f}×)" for p, t in others)
                + f"; unchanged re-pull {100 * b.median(cpu, 'cloud-run pull, unchanged re-pull') / mine:.1f}% of the first")
    if ("relaunch", "first launch (new code): command → instance requested") not in b.rows:
        return lines
    first = b.median("relaunch", "first launch (new code): command → instance requested")
    second = b.median("relaunch", "relaunch (unchanged code): command → instance requested")
    lines.append(f"relaunch: {first:.2f} s first vs {second:.2f} s with unchanged code (0 bytes of code sent)")
    return lines


def report(b: Bench, args, meta: dict, points: list[dict], date: str) -> str:
    lines = [f"# researchkit benchmark — {date}", "",
             f"Machine: {meta['machine']}; {meta['os']}; Python {meta['python']}.  ",
             (f"Peer: {meta['rclone']}. Emulator: fake-gcs-server.  " if args.only == "gcs-pull" else
              f"Peers: {meta['awscli']}; {meta['rclone']}. Emulators: moto {meta['moto']} (its own process), "
              "fake-gcs-server.  "),
             f"Medians of {args.repeat} runs" + ("" if args.only else f" (CLI latency: of {max(5, args.repeat)})")
             + ". Pull data: "
             f"{args.small} files of 1–64 KB + {args.big} files of 20 MB from one run prefix."
             + (f" Only {args.only}." if args.only else ""), "",
             "| group | measure | median (s) | runs (s) | note |", "|---|---|---:|---|---|"]
    for r in b.rows.values():
        runs_ = ", ".join(f"{v:.3f}" for v in r.values)
        lines.append(f"| {r.group} | {r.measure} | {r.median:.3f} | {runs_} | {r.note} |")
    lines += ["", "## Ratios", ""] + [f"- {x}" for x in ratios(b)]
    if not points:
        return "\n".join(lines + [""])
    lines += ["", "## Scaling (pull of N small files, S3)", "", "| files | MB | seconds | ms per file |", "|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['files']} | {p['bytes'] / 1e6:.1f} | {p['seconds']:.2f} | {1000 * p['seconds'] / p['files']:.2f} |")
    lines += ["", "![scaling](scaling.png)", ""]
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["files"] for p in points]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(xs, [p["seconds"] for p in points], "o-")
    a1.set(xscale="log", yscale="log", xlabel="files pulled", ylabel="seconds (median)", title="cloud-run pull time")
    a2.plot(xs, [1000 * p["seconds"] / p["files"] for p in points], "o-")
    a2.set(xscale="log", xlabel="files pulled", ylabel="ms per file", title="cost per file", ylim=(0, None))
    for ax in (a1, a2):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", type=int, default=2000, help="small files in the pull comparison")
    ap.add_argument("--big", type=int, default=5, help="20 MB files in the pull comparison")
    ap.add_argument("--scale", default="200,2000,20000", help="file counts for the scaling curve")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--only", choices=["gcs-pull", "s3-pull"],
                    help="measure only the GCS (S3) pulls (into gcs-pull.md, .json; s3-pull.md, .json)")
    ap.add_argument("--before", metavar="REV", help="also pull with the code at this revision (GCS and S3 pulls)")
    args = ap.parse_args()
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="rk-bench-"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    moto, gcs, gce = MotoProcess(), FakeGCS(), FakeGCE()
    try:
        exports = prepare_ec2(moto.url)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        from researchkit_py.clouds.gce.store import gcs_client
        from researchkit_py.clouds.registry import open_store

        gcs_client().create_bucket("bench-gcs")
        s3_url = exports["RK_BUCKET"]
        s3_bucket = s3_url.removeprefix("s3://").split("/")[0]
        env = {**os.environ, **exports, "HOME": str(scratch), "RK_STATE_HOME": str(scratch / "state"),
               "RK_NO_PROGRESS": "1", "GCE_PROJECT": "bench", "RK_GCE_API_ENDPOINT": gce.url}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine: Python keeps its compiled modules
        b = Bench(scratch, env)
        proj = scratch / "proj"
        shutil.copytree(REPO / "examples" / "toy", proj)
        subprocess.run(["git", "init", "-q", str(proj)], check=True)

        relaunch_sent: list[int] = []
        if not args.only:
            print("bench: CLI latency, embedded provider, relaunch", file=sys.stderr, flush=True)
            cli_latency(b, args.repeat)
            embedded(b, proj, args.repeat)
            relaunch_sent = relaunch(b, proj, args.repeat)

        print("bench: seeding the pull data", file=sys.stderr, flush=True)
        src = scratch / "results"
        count, size = make_results(src, args.small, args.big, seed=1)
        s3, gs = open_store(s3_url), open_store("gs://bench-gcs/researchkit")
        if args.only != "gcs-pull":
            s3_run = seed_run(s3, "ec2", src, scratch / "packs")
            s3_objects_run = seed_run(s3, "ec2", src, scratch / "packs", packs=False)
        if args.only != "s3-pull":
            gs_run = seed_run(gs, "gce", src, scratch / "packs")

        rclone = shutil.which("rclone")
        rclone_env = rclone_environment(env, moto.url, gcs.url)

        def rclone_peers(remote: str) -> dict[str, list[str]]:
            if not rclone:
                return {}
            return {"rclone copy": ["rclone", "copy", remote, OUT],
                    "rclone copy --transfers 16": ["rclone", "copy", "--transfers", "16", "--checkers", "16", remote, OUT]}

        def ours(run_id: str, backend: str, tool: str = CLOUD_RUN) -> list[str]:
            return [tool, "pull", run_id, "--backend", backend, "--json", "--output-dir", OUT]

        before = str(code_tree(args.before, scratch) / "tools" / "cloud-run") if args.before else ""

        def earlier(run_id: str, backend: str) -> dict[str, list[str]]:
            return {f"cloud-run pull, before ({args.before})": ours(run_id, backend, before)} if before else {}

        if args.only != "gcs-pull":
            print(f"bench: pulls from S3 ({count} files, {size / 1e6:.0f} MB)", file=sys.stderr, flush=True)
            aws = [AWS, "s3", "sync", f"s3://{s3_bucket}/researchkit/runs/{s3_run}/results/", OUT,
                   "--endpoint-url", moto.url, "--only-show-errors", "--no-progress"]
            pulls(b, group="pull, S3 (moto)", ours=ours(s3_run, "ec2"),
                  extra={"cloud-run pull, per-object (no packs)": ours(s3_objects_run, "ec2")} | earlier(s3_run, "ec2"),
                  peers={"aws s3 sync": aws} | rclone_peers(
                      f"bs3:{s3_bucket}/researchkit/runs/{s3_run}/results"),
                  src=src, env=env, rclone_env=rclone_env, repeat=args.repeat)
        if args.only != "s3-pull":
            print(f"bench: pulls from GCS ({count} files, {size / 1e6:.0f} MB)", file=sys.stderr, flush=True)
            pulls(b, group="pull, GCS (fake-gcs-server)", ours=ours(gs_run, "gce"), extra=earlier(gs_run, "gce"),
                  peers=rclone_peers(f"bgcs:bench-gcs/researchkit/runs/{gs_run}/results"),
                  src=src, env={**env, "RK_BUCKET": "gs://bench-gcs/researchkit"}, rclone_env=rclone_env,
                  repeat=args.repeat)
        shutil.rmtree(scratch / "out", ignore_errors=True)

        points: list[dict] = []
        if not args.only:
            print("bench: scaling", file=sys.stderr, flush=True)
            points = scaling(b, s3, [int(x) for x in args.scale.split(",")], args.repeat)

        date = time.strftime("%Y-%m-%d")
        meta = versions()
        if args.only == "gcs-pull":
            meta["awscli"] = "not used"
        text = report(b, args, meta, points, date)
        name = args.only or "latest"
        if points:
            plot(points, out_dir / "scaling.png")
        (out_dir / f"{name}.md").write_text(text)
        (out_dir / f"{name}.json").write_text(json.dumps({
            "date": date, **meta, "repeat": args.repeat, "pull_data": {"files": count, "bytes": size},
            "rows": [{"group": r.group, "measure": r.measure, "median_s": round(r.median, 4),
                      "runs_s": [round(v, 4) for v in r.values], "note": r.note} for r in b.rows.values()],
            "ratios": ratios(b), "scaling": points, "relaunch_code_bytes_sent": relaunch_sent,
            "wall_s": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
        print(text)
        print(f"bench: done in {time.perf_counter() - started:.0f} s; {out_dir}/{name}.md, {name}.json",
              file=sys.stderr)
    finally:
        for server in (moto, gcs, gce):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
