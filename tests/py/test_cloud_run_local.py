"""tools/cloud-run end to end on the embedded provider: the real startup script, run as a
detached session, with a directory as the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import sh

from researchkit_py.clouds.local.processes import session_pids

REPO = Path(__file__).resolve().parents[2]
WRITE_METRICS = 'mkdir -p "$RESULTS_DIR" && echo \'{"accuracy": 0.93}\' > "$RESULTS_DIR/metrics.json" && echo trained'


def cloud_run(*args: str):
    return sh.Command(str(REPO / "tools" / "cloud-run"))(*args, _ok_code=list(range(256)), _return_cmd=True,
                                                          _env=dict(os.environ))


def one_line_error(result, prefix="cloud-run: ") -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def instances(tmp_path) -> list[str]:
    d = tmp_path / "state" / "local" / "instances"
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def bucket(tmp_path) -> Path:
    return tmp_path / "state" / "local" / "bucket"


def status(run_id: str) -> dict:
    return json.loads(cloud_run("status", run_id, "--json").stdout)


def wait_for(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_attached_run_pulls_results_and_leaves_nothing_running(project, tmp_path):
    out = tmp_path / "r"
    r = cloud_run("run", WRITE_METRICS, "--output-dir", str(out))
    assert r.exit_code == 0, r.stderr.decode()
    run_id = r.stdout.decode().strip()
    assert json.loads((out / "metrics.json").read_text()) == {"accuracy": 0.93}
    assert (out / ".cloud-run-id").read_text().strip() == run_id
    log = (out / ".cloud-run.log").read_text()
    assert "trained" in log and log.rstrip().endswith("researchkit: DONE (command exited 0)")  # the last line too
    assert instances(tmp_path) == []
    s = status(run_id)
    assert (s["phase"], s["exit_code"], s["cause"]) == ("DONE", 0, "exit")
    run_dir = bucket(tmp_path) / "runs" / run_id
    for name in ("manifest.json", "status.json", "results.manifest.json", "heartbeat", "logs/run.log"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "results.manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["metrics.json"]
    # what the project already had in results/ was not shipped, nor touched
    assert not (run_dir / "results" / "old.txt").exists()
    assert (project / "results" / "old.txt").read_text() == "previous results\n"


def test_pre_provisioned_python_is_used_as_is(project, tmp_path, monkeypatch):
    (project / "requirements.txt").write_text("definitely-not-a-package-rk==0.0.1\n")
    monkeypatch.setenv("RK_VM_PYTHON", subprocess.check_output(["bash", "-c", "command -v python3"], text=True).strip())
    r = cloud_run("run", "python3 -c 'print(42)'", "--quiet")
    assert r.exit_code == 0, r.stderr.decode()
    assert "pre-provisioned Python" in cloud_run("logs", r.stdout.decode().strip()).stdout.decode()


def launch(command: str, max_hours: float) -> str:
    """A detached run launched in-process: the CLI refuses deadlines under 30 s, these tests need seconds."""
    from researchkit_py import lifecycle
    from researchkit_py.settings import Settings

    ctx = lifecycle.Context.open(Settings(), "local")
    return lifecycle.launch(ctx, lifecycle.LaunchOptions(command=command, max_hours=max_hours, detached=True)).run_id


def test_command_hanging_past_its_deadline_is_stopped(project, tmp_path):
    from researchkit_py.protocol import EXIT_TIMEOUT, client_exit_code

    marker = f"rk-hang-{os.getpid()}"
    run_id = launch(f"exec -a {marker} sleep 300", 0.0015)
    s = wait_for(lambda: (lambda st: st if st["phase"] == "FAILED" else None)(status(run_id)), timeout=30)
    assert s["cause"] == "timeout" and client_exit_code(s) == EXIT_TIMEOUT
    wait_for(lambda: instances(tmp_path) == [])
    assert subprocess.run(["pgrep", "-f", marker]).returncode == 1, "the hung command survived"


def test_hard_deadline_alone_ends_a_vm_whose_trap_cannot(project, tmp_path):
    # the command ignores TERM and the soft deadline is out of reach: only the supervisor's kill works
    marker = f"rk-stubborn-{os.getpid()}"
    run_id = launch(f"trap '' TERM; exec -a {marker} sleep 300", 0.001)
    wait_for(lambda: instances(tmp_path) == [], timeout=15)
    assert subprocess.run(["pgrep", "-f", marker]).returncode == 1
    # nothing reported a final status: the bucket and the deadline say what happened
    s = wait_for(lambda: (lambda st: st if st["phase"] == "FAILED" else None)(status(run_id)), timeout=15)
    assert s["cause"] == "timeout"


def test_a_supervisor_forked_from_its_client_powers_off_at_the_deadline(project, tmp_path):
    """A single-threaded client forks the supervisor (no Python start on the way to the run): it
    leads a session of its own, outlives the client, and ends a VM whose trap cannot."""
    import sys

    marker = f"rk-forked-{os.getpid()}"
    code = ("from researchkit_py import lifecycle; from researchkit_py.settings import Settings; "
            "ctx = lifecycle.Context.open(Settings(), 'local'); "
            "import os; print(lifecycle.launch(ctx, lifecycle.LaunchOptions(command=os.environ['CMD'], "
            "max_hours=0.001, detached=True)).run_id)")
    # the command through the environment: the forked supervisor's command line is its client's
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "CMD": f"trap '' TERM; exec -a {marker} sleep 300"})
    (rec_path,) = (tmp_path / "state" / "local" / "instances").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec_path.stem == f"rk-{r.stdout.strip()}"
    pid = rec["supervisor_pid"]
    assert b"researchkit_py.clouds.local.supervisor" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert os.getsid(pid) == pid == rec["session"]
    wait_for(lambda: instances(tmp_path) == [], timeout=15)
    assert subprocess.run(["pgrep", "-f", marker]).returncode == 1


def test_detached_run_then_status_logs_pull(project, tmp_path):
    r = cloud_run("run", 'sleep 1; mkdir -p "$RESULTS_DIR"; seq 1 3 > "$RESULTS_DIR/seq.txt"; echo finished', "--detach")
    assert r.exit_code == 0
    run_id = r.stdout.decode().strip()
    assert "cloud-run logs" in r.stderr.decode()
    follow = cloud_run("logs", run_id, "--follow")
    assert "finished" in follow.stderr.decode() + follow.stdout.decode()
    assert status(run_id)["phase"] == "DONE"
    pulled = cloud_run("pull", run_id, "--output-dir", str(tmp_path / "p"), "--json")
    assert json.loads(pulled.stdout)["files"] == 1
    assert (tmp_path / "p" / "seq.txt").read_text() == "1\n2\n3\n"
    again = json.loads(cloud_run("pull", run_id, "--output-dir", str(tmp_path / "p"), "--json").stdout)
    assert (again["files"], again["bytes"], again["unchanged"]) == (0, 0, 1)
    listing = json.loads(cloud_run("ls", "--json").stdout)
    assert [row["run_id"] for row in listing] == [run_id]


def test_second_pull_of_many_files_moves_nothing(project, tmp_path):
    cmd = 'mkdir -p "$RESULTS_DIR/s"; for i in $(seq 1 300); do echo "$i" > "$RESULTS_DIR/s/f$i.txt"; done'
    r = cloud_run("run", cmd, "--output-dir", str(tmp_path / "r"), "--quiet")
    assert r.exit_code == 0
    again = json.loads(cloud_run("pull", r.stdout.decode().strip(), "--output-dir", str(tmp_path / "r"), "--json").stdout)
    assert (again["files"], again["bytes"], again["unchanged"]) == (0, 0, 300)


def test_pull_of_a_finished_run_trusts_its_state_until_a_file_changes(project, tmp_path):
    cmd = 'mkdir -p "$RESULTS_DIR/s"; for i in $(seq 1 20); do echo "$i" > "$RESULTS_DIR/s/f$i.txt"; done'
    out = tmp_path / "r"
    run_id = cloud_run("run", cmd, "--output-dir", str(out), "--quiet").stdout.decode().strip()
    state = json.loads((out / ".cloud-run-state.json").read_text())
    assert (state["run_id"], state["final"], len(state["files"])) == (run_id, True, 20)
    # a finished run, everything in place: no request at all (a missing bucket would fail otherwise)
    moved = bucket(tmp_path).rename(tmp_path / "elsewhere")
    again = json.loads(cloud_run("pull", run_id, "--output-dir", str(out), "--json").stdout)
    assert (again["files"], again["bytes"], again["unchanged"], again["complete"]) == (0, 0, 20, True)
    moved.rename(bucket(tmp_path))
    # an edited file is noticed by its size or mtime, kept, and fetched again
    (out / "s" / "f3.txt").write_text("mine, longer\n")
    (out / "s" / "f4.txt").unlink()
    fixed = json.loads(cloud_run("pull", run_id, "--output-dir", str(out), "--json").stdout)
    assert (fixed["files"], fixed["unchanged"]) == (2, 18)
    assert (out / "s" / "f3.txt").read_text() == "3\n" and (out / "s" / "f3.txt.orig").read_text() == "mine, longer\n"
    # same size and mtime but other bytes escape the state; --verify re-hashes everything
    target = out / "s" / "f5.txt"
    st = target.stat()
    target.write_text("X\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert json.loads(cloud_run("pull", run_id, "--output-dir", str(out), "--json").stdout)["files"] == 0
    verified = json.loads(cloud_run("pull", run_id, "--output-dir", str(out), "--json", "--verify").stdout)
    assert verified["files"] == 1 and target.read_text() == "5\n"


def test_an_unchanged_repull_opens_no_provider_while_the_reaper_is_not_due(project, tmp_path, monkeypatch):
    """A finished run, all its files in place: `pull` answers from its record without opening the
    provider or the bucket — but not when that would skip a reaper pass that is due, nor for
    another bucket, backend or a changed file (then it goes the whole way, as before)."""
    from researchkit_py import cloudrun, lifecycle
    from researchkit_py.repull import reap_stamp
    from researchkit_py.settings import Settings

    out = tmp_path / "r"
    run_id = cloud_run("run", WRITE_METRICS, "--output-dir", str(out), "--quiet").stdout.decode().strip()
    opened: list[str] = []
    real = lifecycle.Context.open
    monkeypatch.setattr(lifecycle.Context, "open", lambda *a, **k: opened.append("opened") or real(*a, **k))
    monkeypatch.delenv("RK_REAP_INTERVAL")  # the default: 300 s

    def repull(*extra: str) -> list[str]:
        opened.clear()
        assert cloudrun.main(["pull", run_id, "--output-dir", str(out), "--json", *extra]) == 0
        return list(opened)

    assert repull() == []  # the launch has just reaped
    assert repull("--verify") == ["opened"]
    monkeypatch.setenv("RK_BUCKET", str(tmp_path / "other-bucket"))
    assert repull("--backend", "local") == ["opened"]
    monkeypatch.delenv("RK_BUCKET")
    os.utime(out / "metrics.json", ns=(0, 0))
    assert repull() == ["opened"]  # checked against the bucket; the record then notes the new mtime
    assert repull() == []
    stamp = reap_stamp(Settings(), "local", json.loads((out / ".cloud-run-state.json").read_text())["store"])
    os.utime(stamp, (time.time() - 301, time.time() - 301))  # five minutes later: the reaper is due
    assert repull() == ["opened"] and time.time() - stamp.stat().st_mtime < 60
    assert repull() == []


def test_the_repulls_cloud_is_the_registrys():
    """repull.named_cloud skips importing the registry; it must resolve as cloud_for does."""
    from researchkit_py.clouds.registry import CLOUDS, TARGETS, cloud_for
    from researchkit_py.repull import named_cloud
    from researchkit_py.settings import Settings

    for target in TARGETS:
        for rk_backend in ("", *CLOUDS):
            for backend in (None, *CLOUDS):
                settings = Settings(environ={"COMPUTE_TARGET": target, "RK_BACKEND": rk_backend}, read_file=False)
                assert named_cloud(settings, backend) == cloud_for(settings, backend).name, (target, rk_backend, backend)


def test_terminate_stops_a_running_vm(project, tmp_path):
    marker = f"rk-term-{os.getpid()}"
    run_id = cloud_run("run", f"exec -a {marker} sleep 300", "--detach").stdout.decode().strip()
    wait_for(lambda: status(run_id)["phase"] == "RUN")
    r = cloud_run("terminate", run_id)
    assert r.exit_code == 0
    s = status(run_id)
    assert (s["phase"], s["cause"]) == ("FAILED", "terminated")
    assert subprocess.run(["pgrep", "-f", marker]).returncode == 1
    assert instances(tmp_path) == []
    assert (bucket(tmp_path) / "runs" / run_id / "logs" / "run.log").is_file()


def test_reaper_deletes_instances_past_their_deadline(project, tmp_path):
    run_id = cloud_run("run", "sleep 300", "--detach").stdout.decode().strip()
    rec = expire(tmp_path, run_id)
    dry = json.loads(cloud_run("reap", "--dry-run", "--json").stdout)
    assert dry == {"dry_run": True, "instances": [f"rk-{run_id}"]}
    assert instances(tmp_path) == [f"rk-{run_id}.json"]
    assert cloud_run("reap").stdout.decode().strip() == f"deleted rk-{run_id}"
    assert instances(tmp_path) == [] and not session_pids(rec["session"])


def expire(tmp_path, run_id: str) -> dict:
    rec_path = tmp_path / "state" / "local" / "instances" / f"rk-{run_id}.json"
    rec = json.loads(rec_path.read_text())
    rec["labels"]["researchkit-expires"] = str(int(time.time()) - 1)
    rec_path.write_text(json.dumps(rec))
    return rec


def test_reaper_runs_at_most_every_interval_but_always_before_a_launch(project, tmp_path, monkeypatch):
    monkeypatch.delenv("RK_REAP_INTERVAL")  # the default: 300 s
    first = cloud_run("run", "sleep 300", "--detach").stdout.decode().strip()
    second = cloud_run("run", "sleep 300", "--detach").stdout.decode().strip()
    expire(tmp_path, first)
    assert "reaped" not in cloud_run("ls").stderr.decode()  # the launch just reaped: not due yet
    assert f"rk-{first}.json" in instances(tmp_path)
    third = cloud_run("run", "sleep 300", "--detach")  # a launch always reaps
    assert f"reaped rk-{first}" in third.stderr.decode() and f"rk-{first}.json" not in instances(tmp_path)
    expire(tmp_path, second)
    stamp = next((tmp_path / "state" / "reaped").iterdir())
    os.utime(stamp, (time.time() - 301, time.time() - 301))  # five minutes later
    assert f"reaped rk-{second}" in cloud_run("ls").stderr.decode()
    cloud_run("terminate", third.stdout.decode().strip())


def test_interrupted_launch_leaves_a_record_and_no_vm(project, tmp_path, monkeypatch):
    from researchkit_py import lifecycle
    from researchkit_py.clouds.local.provider import LocalProvider
    from researchkit_py.settings import Settings

    def interrupted(self, req):  # Ctrl-C while the instance request is in flight
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalProvider, "create", interrupted)
    ctx = lifecycle.Context.open(Settings(), "local")
    with pytest.raises(KeyboardInterrupt):
        lifecycle.launch(ctx, lifecycle.LaunchOptions(command="true"))
    (run_id,) = ctx.store.list_dirs("runs")
    assert ctx.store.exists(f"runs/{run_id}/manifest.json")
    status = ctx.store.read_json(f"runs/{run_id}/status.json")
    assert (status["phase"], status["cause"]) == ("CANCELLED", "cancelled"), status  # stopped, not a boot_error
    assert status["message"].startswith("launch interrupted")
    assert instances(tmp_path) == []


def test_pull_wait_waits_for_a_run_still_going_then_pulls(project, tmp_path):
    r = cloud_run("run", f"sleep 3; {WRITE_METRICS}", "--detach")
    run_id = r.stdout.decode().strip()
    out = tmp_path / "r"
    pulled = cloud_run("pull", run_id, "--wait", "--output-dir", str(out))
    err = pulled.stderr.decode()
    assert pulled.exit_code == 0, err
    assert f"cloud-run: waiting for {run_id}: " in err and "its deadline is" in err  # progress, bounded
    assert json.loads((out / "metrics.json").read_text()) == {"accuracy": 0.93}
    assert status(run_id)["phase"] == "DONE"


def test_pull_wait_gives_up_at_the_runs_deadline(project, tmp_path, monkeypatch):
    """A run that never ends (its VM reports RUN and lives on past its deadline) is not waited for forever."""
    from researchkit_py import lifecycle, protocol
    from researchkit_py.clouds.base import Instance
    from researchkit_py.errors import KitError
    from researchkit_py.settings import Settings

    ctx = lifecycle.Context.open(Settings(), "local")
    run_id, at = protocol.new_run_id("stuck"), time.time() - 100
    ctx.store.write_json(f"runs/{run_id}/manifest.json", protocol.RunManifest(
        run_id=run_id, provider="local", instance=protocol.instance_name(run_id), command="x", bundle="b",
        created_at=protocol.iso(at), expires_at=protocol.iso(at + 30), max_hours=0.01, heartbeat_seconds=1).to_dict())
    ctx.store.write_json(f"runs/{run_id}/status.json", protocol.status_record(run_id, "RUN"))
    monkeypatch.setattr(ctx.provider, "get", lambda name: Instance(name, "RUNNING"))
    with pytest.raises(KitError, match=f"run {run_id} is still RUN past its deadline .*cloud-run terminate {run_id}"):
        lifecycle.wait_quietly(ctx, run_id)


def test_data_dirs_travel_beside_the_code(project, tmp_path):
    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text("x,y\n1,2\n")
    cmd = 'mkdir -p "$RESULTS_DIR"; wc -l < data/train.csv > "$RESULTS_DIR/rows.txt"'
    r = cloud_run("run", cmd, "--data-dirs", "data", "--output-dir", str(tmp_path / "r"), "--quiet")
    assert r.exit_code == 0, r.stderr.decode()
    assert (tmp_path / "r" / "rows.txt").read_text().strip() == "2"


def test_results_subdir_is_configurable(project, tmp_path, monkeypatch):
    monkeypatch.setenv("RK_RESULTS_SUBDIR", "out/metrics")
    cmd = 'case "$RESULTS_DIR" in */out/metrics) echo ok > "$RESULTS_DIR/where.txt";; esac'
    r = cloud_run("run", cmd, "--output-dir", str(tmp_path / "r"), "--quiet")
    assert r.exit_code == 0 and (tmp_path / "r" / "where.txt").read_text() == "ok\n"


def test_dry_run_prints_the_script_and_creates_nothing(project, tmp_path):
    r = cloud_run("run", "python train.py", "--dry-run")
    assert r.exit_code == 0
    assert r.stdout.decode().startswith("#!/bin/bash") and "nothing was created" in r.stderr.decode()
    assert not bucket(tmp_path).exists() and instances(tmp_path) == []


@pytest.mark.parametrize("args,code,message", [
    (["status", "no-such-run-20260101"], 1, "no run no-such-run-20260101 in file://"),
    (["pull", "Not_A_Run!"], 2, "is not a run id"),
    (["logs", "no-such-run"], 1, "no run no-such-run"),
    (["run", "true", "--output-dir", "/nonexistent/parent/r"], 1, "its parent /nonexistent/parent does not exist"),
    (["run", "true", "--env", "NOEQUALS"], 2, "write it as NAME=value"),
    (["run", "true", "--env", "GITHUB_TOKEN=ghp_x"], 1, "looks like a credential"),
    (["run", "true", "--max-hours", "0"], 2, "--max-hours 0 must be positive"),
    (["run", "true", "--max-hours", "0.008"], 2, "--max-hours 0.008 is 28.8 s; a run's deadline must be between 30 s"),
    (["run", "true", "--max-hours", "3000"], 2, "and 120 days (its longest): use 0.0084 to 2880 hours"),
    (["--backend", "azure", "ls"], 2, "unknown backend 'azure'"),
])
def test_bad_input_is_one_line_and_creates_nothing(project, tmp_path, args, code, message):
    r = cloud_run(*args)
    assert r.exit_code == code
    assert message in one_line_error(r)
    assert not (bucket(tmp_path) / "runs").exists() and instances(tmp_path) == []


def test_output_dir_that_is_a_file_is_refused(project, tmp_path):
    (tmp_path / "f").write_text("x")
    r = cloud_run("run", "true", "--output-dir", str(tmp_path / "f"))
    assert r.exit_code == 1 and "is not a directory" in one_line_error(r)


def test_unknown_compute_target_is_refused(project, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPUTE_TARGET", "azure")
    r = cloud_run("run", "true")
    assert r.exit_code == 1 and "COMPUTE_TARGET=azure is not one of local, ec2, gce, sandbox" in one_line_error(r)
    assert instances(tmp_path) == []


def test_unreadable_config_is_one_line(project, tmp_path):
    (project / ".orchestration-kit.env").write_text("COMPUTE_TARGET=$(whoami)\n")
    r = cloud_run("ls")
    assert r.exit_code == 1 and "command substitution" in one_line_error(r)


def test_usage_without_command():
    r = cloud_run()
    assert r.exit_code == 2 and "usage: cloud-run" in r.stderr.decode()


def test_a_wait_on_the_local_bucket_wakes_when_a_watched_object_changes(tmp_path):
    """An attached run's pause between two reads ends when its status or log changes (the 60 s
    pause, were it slept, would fail the test's timeout), and lasts its time when nothing does."""
    import threading

    from researchkit_py.clouds.local.store import LocalStore
    from researchkit_py.settings import Settings

    store = LocalStore(tmp_path / "b", Settings(read_file=False))
    store.put_bytes("runs/r/status.json", b"{}")
    pause = store.watch(["runs/r/status.json", "runs/r/logs/run.log"])
    t0 = time.monotonic()
    pause(0.05)  # nothing changed: the pause is its own length
    assert time.monotonic() - t0 >= 0.05
    for change in (lambda: store.put_bytes("runs/r/logs/run.log", b"x"),  # appears
                   lambda: store.put_bytes("runs/r/status.json", b'{"phase": "DONE"}'),  # replaced
                   lambda: store.delete("runs/r/status.json")):  # goes
        timer = threading.Timer(0.1, change)
        timer.start()
        t0 = time.monotonic()
        pause(60)
        assert time.monotonic() - t0 < 30
        timer.join()
