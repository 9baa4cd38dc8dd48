"""Measure the lifecycle core on the embedded provider (no cloud needed).

  .venv/bin/python bench/core.py [--files 2000] [--repeat 3]

Prints medians: CLI latency, launch→results overhead (total minus the command's own
runtime), and first / unchanged re-pull of N small result files. Runs in a scratch HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLOUD_RUN = str(REPO / "tools" / "cloud-run")


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rk-bench-"))
    proj = scratch / "proj"
    proj.mkdir()
    (proj / "train.py").write_text("print('x')\n")
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    env = {**os.environ, "HOME": str(scratch), "RK_STATE_HOME": str(scratch / "state"), "RK_NO_PROGRESS": "1",
           "EXP_PROJECT_ROOT": str(proj), "COMPUTE_TARGET": "local"}
    rows: dict[str, list[float]] = {"experiment.sh help": [], "cloud-run --help": [], "launch→results overhead": [],
                                    "detach (command to run id)": [],
                                    f"pull {args.files} files, first": [], f"pull {args.files} files, unchanged": []}
    sleep = 1.0
    gen = (f'python3 -c "import os,pathlib; d=pathlib.Path(os.environ[\'RESULTS_DIR\']);'
           f'[(d/f\'f{{i}}.bin\').write_bytes(os.urandom(1024+i*31%63000)) for i in range({args.files})]"')
    for i in range(args.repeat):
        rows["experiment.sh help"].append(timed([str(REPO / "experiment.sh"), "help"], env, proj)[0])
        rows["cloud-run --help"].append(timed([CLOUD_RUN, "--help"], env, proj)[0])
        total, r = timed([CLOUD_RUN, "run", f"sleep {sleep}", "--output-dir", str(scratch / f"o{i}"), "--quiet"], env, proj)
        assert r.returncode == 0, r.stderr
        rows["launch→results overhead"].append(total - sleep)
        d, r = timed([CLOUD_RUN, "run", "true", "--detach"], env, proj)
        rows["detach (command to run id)"].append(d)
        _, r = timed([CLOUD_RUN, "run", gen, "--quiet"], env, proj)
        run_id = r.stdout.strip()
        out = scratch / f"pull{i}"
        first, r1 = timed([CLOUD_RUN, "pull", run_id, "--output-dir", str(out), "--json"], env, proj)
        again, r2 = timed([CLOUD_RUN, "pull", run_id, "--output-dir", str(out), "--json"], env, proj)
        assert json.loads(r1.stdout)["files"] == args.files and json.loads(r2.stdout)["bytes"] == 0
        rows[f"pull {args.files} files, first"].append(first)
        rows[f"pull {args.files} files, unchanged"].append(again)
    print(f"| measure (median of {args.repeat}, embedded provider) | seconds |\n|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    subprocess.run(["rm", "-rf", str(scratch)])


if __name__ == "__main__":
    main()
