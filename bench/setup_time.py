"""How long a VM takes from its start to the user's command, step by step, on a provider's
default image: the tests' bare Debian 12 image (python3 only: no pip, no venv, no SDK), booted
by the GCE and EC2 look-alikes, `cloud-run run` of a project whose requirements.txt names
tabulate. The VM reaches the wheelhouse served on its bridge through UV_INDEX_URL, where a
real one reaches PyPI: downloads here cross a local bridge, so their times are lower bounds.

  bench/setup_time.py [--repeat 3] [--out bench/results]     (root; builds the bare image where missing)

Writes setup-time.md and setup-time.json into --out: the median seconds of each step (from the
startup script's own trace, see tests/py/setup_trace.py), and the fake VM's own overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "py")]

import bare_image  # noqa: E402
import setup_trace  # noqa: E402
from emulate import start_ec2, start_gce  # noqa: E402
from fake_vm import FakeVMs, VMNetwork  # noqa: E402

COMMAND = ("python -c 'import os, tabulate; "
           "open(os.environ[\"RESULTS_DIR\"] + \"/table.txt\", \"w\").write(tabulate.tabulate([[1, 2]]))'")


def project(root: Path) -> Path:
    proj = root / "proj"
    proj.mkdir()
    (proj / "requirements.txt").write_text("tabulate\n")
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    return proj


def runs(cloud: str, net: VMNetwork, images: bare_image.BareImages, repeat: int) -> list[dict]:
    """`cloud-run run` `repeat` times on the look-alike of `cloud`, each VM from the bare image."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        exports, vms, stops = (start_gce if cloud == "gce" else start_ec2)(net.host_ip, net, Path(d) / "vms",
                                                                          images.image("bare"))
        vms.trace_startup = True
        env = {**os.environ, **exports, "RK_STATE_HOME": f"{d}/state", "RK_NO_PROGRESS": "1", "HOME": d,
               "RK_POLL_SECONDS": "0.2", "EXP_PROJECT_ROOT": str(project(Path(d)))}
        try:
            for i in range(repeat):
                t0 = time.monotonic()
                r = subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", cloud, "run", COMMAND,
                                    "--output-dir", f"{d}/out{i}"], capture_output=True, text=True, env=env,
                                   cwd=env["EXP_PROJECT_ROOT"], timeout=300)
                if r.returncode:
                    raise SystemExit(f"setup_time: {cloud} run failed ({r.returncode}): {r.stderr[-2000:]}")
                (log,) = (vms.root / f"rk-{r.stdout.strip()}" / "var").glob("*/run.log")
                out.append({"cloud": cloud, "run": i, "wall": time.monotonic() - t0,
                            **setup_trace.setup_split(log.read_text())})
        finally:
            for stop in stops:
                stop()
    return out


def boot_overhead(net: VMNetwork, images: bare_image.BareImages, n: int = 10) -> dict[str, float]:
    """The fake VM's own part, not a real VM's (median of n): FakeVMs.boot() (namespace, metadata
    server, overlay, process start), then to the script's first line."""
    boot, first = [], []
    with tempfile.TemporaryDirectory() as d:
        vms = FakeVMs(Path(d), {}, net, images.image("bare"))
        try:
            for _ in range(n):
                name = f"b-{uuid.uuid4().hex[:8]}"
                t0 = time.time()
                vms.boot('#!/bin/bash\necho "FIRST $EPOCHREALTIME"\n', {"flavor": "gce", "name": name,
                                                                       "zone": "z-a", "project": "p"})
                t1 = time.time()
                vms.vms[name]["proc"].wait(30)
                line = (vms.vms[name]["root"] / "console.log").read_text().split("FIRST ")[1]
                boot.append(t1 - t0)
                first.append(float(line.split()[0]) - t1)
        finally:
            vms.stop()
    return {"boot()": statistics.median(boot), "to the first line": statistics.median(first)}


def report(results: list[dict], overhead: dict[str, float], repeat: int) -> str:
    by = {c: [r for r in results if r["cloud"] == c] for c in ("gce", "ec2")}
    labels = list(dict.fromkeys(k for r in results for k in r["steps"] if k != "start"))

    def med(cloud: str, key: str | None) -> str:
        values = [r["before_command"] if key is None else r["steps"].get(key) for r in by[cloud]]
        return "" if None in values else f"{statistics.median(values):.2f}"

    lines = [f"# VM start → the user's command, on a bare Debian 12 image — {time.strftime('%Y-%m-%d')}", "",
             f"{os.cpu_count()} cores, Python {platform.python_version()}; median of {repeat} runs each, seconds, "
             "from the startup script's own trace (bench/setup_time.py). Indented: the parts of requirements.txt.",
             "", "| step | GCE | EC2 |", "|---|---:|---:|"]
    lines += [f"| {label.replace('  ', '&nbsp;&nbsp;')} | {med('gce', label)} | {med('ec2', label)} |"
              for label in labels if label != "command"]
    lines += [f"| **before the command** | **{med('gce', None)}** | **{med('ec2', None)}** |",
              f"| `cloud-run run`, launch to exit (the command itself: ~0.1 s) | "
              f"{statistics.median(r['wall'] for r in by['gce']):.1f} | "
              f"{statistics.median(r['wall'] for r in by['ec2']):.1f} |", "",
              f"The fake VM itself (not part of the rows above): `FakeVMs.boot()` {overhead['boot()']:.2f} s, then "
              f"{overhead['to the first line']:.3f} s to the script's first line (median of 10).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    reason = VMNetwork.available()
    if reason:
        print(f"setup_time: fake VMs need their own network namespaces: {reason}", file=sys.stderr)
        return 1
    net = VMNetwork()
    images = None
    try:
        try:
            images = bare_image.BareImages(net.host_ip)
        except bare_image.Unavailable as e:
            print(f"setup_time: {e}", file=sys.stderr)
            return 1
        results = runs("gce", net, images, args.repeat) + runs("ec2", net, images, args.repeat)
        text = report(results, boot_overhead(net, images), args.repeat)
    finally:
        if images is not None:
            images.stop()
        net.stop()
    out = Path(args.out)
    (out / "setup-time.md").write_text(text)
    (out / "setup-time.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
