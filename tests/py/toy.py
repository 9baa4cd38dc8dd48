"""The shipped toy example as a project of its own, for end-to-end cycles on each target."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_toy_cycle(tmp_path: Path, target: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`experiment.sh cycle` on a copy of examples/toy with COMPUTE_TARGET=target and the scripted agent."""
    toy = tmp_path / "toy"
    shutil.copytree(REPO / "examples" / "toy", toy)
    (toy / ".orchestration-kit.env").write_text(f"COMPUTE_TARGET={target}\n")
    subprocess.run(["git", "init", "-q", str(toy)], check=True)
    env = {**os.environ, "EXP_AGENT": "scripted", "EXP_PROJECT_ROOT": str(toy), "NO_COLOR": "1"}
    r = subprocess.run([str(REPO / "experiment.sh"), "cycle", "experiments/exp-001-toy-logreg.md"], cwd=toy, env=env,
                       capture_output=True, text=True, timeout=300)
    return toy, r


def assert_cycle_synced_and_confirmed(r: subprocess.CompletedProcess, target: str) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"── RUN exp-001-toy-logreg (compute: {target}) ──" in r.stdout
    assert "Results synced: results/exp-001-toy-logreg/metrics.json exists" in r.stdout
    assert "Verdict: CONFIRMED" in r.stdout
