"""Attached means attached: a RUN and its cloud run live and die together, and the RUN's budget
and the run's deadline are one number (experiment/budget.py). The interrupts of `cloud-run run`
itself, on every provider, are the fault matrix's F5 rows (test_faults.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from toy import TOY_SPEC, make_toy

from researchkit_py.errors import KitError
from researchkit_py.experiment.budget import MARGIN, run_limits
from researchkit_py.experiment.spec import load_spec
from researchkit_py.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def toy_spec(tmp_path: Path) -> Path:
    return make_toy(tmp_path, "sandbox") / TOY_SPEC  # max_gpu_hours 0.1, estimated_wall_hours 0.01


@pytest.mark.parametrize("env,target,want", [
    ({}, "ec2", (360 + MARGIN, 0.1)),  # the spec's max_gpu_hours: the VM's deadline, RUN's budget past it
    ({"MAX_GPU_HOURS": "2"}, "gce", (7200 + MARGIN, 2.0)),
    ({"EXP_TIME_BUDGET": "1500"}, "sandbox", (360 + MARGIN, 0.1)),  # a larger budget does not lengthen the run
    ({"EXP_TIME_BUDGET": "1200"}, "ec2", (1200, 300 / 3600)),  # a smaller one shortens the run's deadline
    ({}, "local", (600, None)),  # no VM: twice the estimate, at least 600 s
    ({"EXP_TIME_BUDGET": "42"}, "local", (42, None)),
])
def test_runs_budget_and_the_vms_deadline_are_one_number(tmp_path, env, target, want):
    spec = load_spec(toy_spec(tmp_path))
    budget, hours = run_limits(Settings(root=tmp_path, environ=env, read_file=False), spec, target)
    assert (budget, hours) == (want[0], pytest.approx(want[1]) if want[1] else None)
    if hours is not None:
        assert budget >= hours * 3600 + MARGIN - 1  # the VM's deadline always comes first


def test_a_budget_too_short_for_a_cloud_run_is_one_line(tmp_path):
    spec = load_spec(toy_spec(tmp_path))
    with pytest.raises(KitError, match=f"EXP_TIME_BUDGET=600 leaves a cloud run -300 s .* at least {MARGIN + 30}"):
        run_limits(Settings(root=tmp_path, environ={"EXP_TIME_BUDGET": "600"}, read_file=False), spec, "gce")


def test_the_directive_and_the_phase_budget_agree(tmp_path, monkeypatch):
    """What experiment.sh gets: PHASE_BUDGET and the directive's --max-hours, from one number."""
    spec = toy_spec(tmp_path)
    root = spec.parents[1]
    monkeypatch.chdir(root)
    env = {**os.environ, "EXP_PROJECT_ROOT": str(root), "EXP_AGENT": "scripted", "MAX_GPU_HOURS": "0.5"}
    r = subprocess.run([str(REPO / "tools" / "_py"), "researchkit_py.experiment.cli", "begin", "run", "--spec", TOY_SPEC],
                       capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"PHASE_BUDGET={1800 + MARGIN}\n" in r.stdout
    prompt = Path(next(line.split("=", 1)[1].strip("'") for line in r.stdout.splitlines()
                       if line.startswith("PROMPT_FILE=")))
    assert "--max-hours 0.5" in prompt.read_text()
    subprocess.run([str(REPO / "tools" / "_py"), "researchkit_py.experiment.cli", "unlock",
                    *[line.split("=", 1)[1].strip("'") for line in r.stdout.splitlines()
                      if line.startswith("LOCK_RECORD=")]], env=env, cwd=root, timeout=60)


def test_interrupting_experiment_sh_run_stops_its_cloud_run(tmp_path, monkeypatch):
    """Ctrl-C to `experiment.sh run` while its cloud run runs: the run is CANCELLED, its VM gone,
    its id in .cloud-run-id and printed, the spec unlocked; sync_results could pull it later."""
    spec = toy_spec(tmp_path)
    root = spec.parents[1]
    text = spec.read_text()
    spec.write_text(text.replace('python3 train.py --out "$RESULTS_DIR"',
                                 'mkdir -p "$RESULTS_DIR"; echo partial > "$RESULTS_DIR/p.txt"; sleep 600'))
    monkeypatch.setenv("RK_CANCEL_WAIT", "20")
    env = {**os.environ, "EXP_AGENT": "scripted", "EXP_PROJECT_ROOT": str(root), "NO_COLOR": "1"}
    p = subprocess.Popen([str(REPO / "experiment.sh"), "run", TOY_SPEC], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = root / "results" / "exp-001-toy-logreg"
    bucket = Path(os.environ["RK_STATE_HOME"]) / "local" / "bucket"
    end = time.time() + 120
    while time.time() < end:  # the command runs on the VM
        ids = list(bucket.glob("runs/*/logs/run.log"))
        if ids and "running:" in ids[0].read_text():
            break
        time.sleep(0.2)
    else:
        p.kill()
        raise AssertionError(f"the run never started: {p.communicate()[0]}")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    run_id = (results / ".cloud-run-id").read_text().strip()
    status = json.loads((bucket / "runs" / run_id / "status.json").read_text())
    assert (status["phase"], status.get("cause")) == ("CANCELLED", "cancelled"), status
    assert not list((Path(os.environ["RK_STATE_HOME"]) / "local" / "instances").glob("*.json"))
    assert (spec.stat().st_mode & 0o777) == 0o644  # unlocked
    log = (root / ".kit-state" / "logs" / "run.log").read_text()
    assert f"cloud-run: run {run_id}" in log + out, log


def test_a_run_started_with_hangup_ignored_outlives_its_terminal(tmp_path):
    """`nohup cloud-run run …`: HUP was ignored when it started, so the hangup of the terminal it
    was started from must not cancel the run (a shell's trap leaves such a signal ignored too)."""
    out = tmp_path / "out"
    cmd = 'sleep 3; mkdir -p "$RESULTS_DIR"; echo done > "$RESULTS_DIR/d.txt"'
    p = subprocess.Popen([str(REPO / "tools" / "cloud-run"), "--backend", "local", "run", cmd, "--output-dir", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    run_id = p.stdout.readline().strip()  # printed once the instance exists: the client is attached
    assert run_id, p.communicate()[1]
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and f"{run_id} DONE" in err, (p.returncode, err)
    assert (out / "d.txt").read_text() == "done\n"
