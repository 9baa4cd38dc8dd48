"""The shipped toy example as a project of its own, for end-to-end cycles on each target."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOY_SPEC = "experiments/exp-001-toy-logreg.md"


def make_toy(tmp_path: Path, target: str) -> Path:
    """A copy of examples/toy with COMPUTE_TARGET=target, in a git repository of its own."""
    toy = tmp_path / "toy"
    shutil.copytree(REPO / "examples" / "toy", toy)
    (toy / ".orchestration-kit.env").write_text(f"COMPUTE_TARGET={target}\n")
    subprocess.run(["git", "init", "-q", str(toy)], check=True)
    return toy


def run_toy_cycle(tmp_path: Path, target: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`experiment.sh cycle` on the toy with COMPUTE_TARGET=target and the scripted agent."""
    toy = make_toy(tmp_path, target)
    env = {**os.environ, "EXP_AGENT": "scripted", "EXP_PROJECT_ROOT": str(toy), "NO_COLOR": "1"}
    r = subprocess.run([str(REPO / "experiment.sh"), "cycle", TOY_SPEC], cwd=toy, env=env,
                       capture_output=True, text=True, timeout=300)
    return toy, r


def assert_cycle_synced_and_confirmed(r: subprocess.CompletedProcess, target: str) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"── RUN exp-001-toy-logreg (compute: {target}) ──" in r.stdout
    assert "Results synced: results/exp-001-toy-logreg/metrics.json exists" in r.stdout
    assert "Verdict: CONFIRMED" in r.stdout
