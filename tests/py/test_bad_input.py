"""Bad input and a hostile local disk: one line naming the problem and the fix, a non-zero
exit, no traceback, and nothing partial left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from finished_run import finished_run, local_store

REPO = Path(__file__).resolve().parents[2]
CLOUD_RUN = str(REPO / "tools" / "cloud-run")


def run(*argv: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=env or os.environ.copy(), timeout=120)


def one_line(r: subprocess.CompletedProcess, prefix: str = "cloud-run: ") -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith(prefix), lines
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --- keys, paths and directories -----------------------------------------------------------
def test_a_key_too_long_for_a_file_name_is_refused_before_anything_is_written(project, tmp_path):
    store = local_store()
    run_id = finished_run(store, {"ok.txt": b"ok"})
    long = "k" * 300
    store.write_json(f"runs/{run_id}/results.manifest.json", {"files": [
        {"path": "ok.txt", "size": 2, "sha256": hashlib.sha256(b"ok").hexdigest()},
        {"path": f"sub/{long}", "size": 1, "sha256": "0" * 64}]})
    out = tmp_path / "out"
    line = one_line(run(CLOUD_RUN, "pull", run_id, "--output-dir", str(out)))
    assert "refusing object key 'sub/kkk" in line and "fetch that object by hand under a shorter name" in line
    assert tree(out) == []


def test_output_dir_under_a_file_names_the_file(project, tmp_path):
    run_id = finished_run(local_store(), {"m.json": b"{}"})
    (project / "afile").write_text("x")
    line = one_line(run(CLOUD_RUN, "pull", run_id, "--output-dir", "afile/out"))
    assert line == "cloud-run: --output-dir afile/out: afile is a file, not a directory; choose another path"
    r = run(sys.executable, "-m", "researchkit_py.detached", "download", "1", "--output-dir", "afile/x")
    assert one_line(r, "detached: ") == \
        "detached: --output-dir afile/x: afile is a file, not a directory; choose another path"
    assert (project / "afile").read_text() == "x"


def test_pulling_an_unknown_run_says_so_whatever_the_folder(project, tmp_path):
    shutil.rmtree(project / "results")
    line = one_line(run(CLOUD_RUN, "pull", "no-such-run-20260101-000000-00000000"))
    assert line.startswith("cloud-run: no run no-such-run-20260101-000000-00000000 in file://")
    assert not (project / "results").exists()
    run_id = finished_run(local_store(), {"m.json": b"{}"})
    assert run(CLOUD_RUN, "pull", run_id).returncode == 0  # the default results/<id>: its parent is made
    assert (project / "results" / run_id / "m.json").read_bytes() == b"{}"


def _confined(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` in a private mount namespace (its mounts vanish with it)."""
    return run("unshare", "--mount", "bash", "-c", script, cwd=cwd)


def _can_mount() -> str:
    """Why this machine cannot give a test its own mounts ('' when it can)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to mount a read-only directory or a small tmpfs in its own namespace"
    r = subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return "" if r.returncode == 0 else f"mount namespaces refused here: {r.stderr.decode().strip()}"


needs_mounts = pytest.mark.skipif(bool(_can_mount()), reason=_can_mount() or "-")


def test_a_read_only_subdirectory_refuses_the_pull_whole(project, tmp_path):
    """A read-only subdirectory: root ignores permission bits, so as root the directory is a
    read-only bind mount (EROFS); as anyone else a chmod (EACCES). Either way, no file lands."""
    run_id = finished_run(local_store(), {"a.txt": b"a", "sub/b.txt": b"b"})
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    pull = f"{CLOUD_RUN} pull {run_id} --output-dir {out}"
    if os.geteuid() == 0:
        if _can_mount():
            pytest.skip(_can_mount())
        r = _confined(f"mount --bind {out}/sub {out}/sub && mount -o remount,bind,ro {out}/sub && {pull}", tmp_path)
    else:
        (out / "sub").chmod(0o555)
        r = run("bash", "-c", pull)
        (out / "sub").chmod(0o755)
    line = one_line(r)
    assert f"{out}/sub is not writable; make it writable (chmod u+w {out}/sub)" in line and "nothing was changed" in line
    assert tree(out) == ["sub"]


@needs_mounts
def test_a_full_disk_changes_nothing(project, tmp_path):
    """ENOSPC from a real filesystem: a tmpfs of a few blocks, mounted in the test's own mount
    namespace (the kernel's own errors, where a fault-injecting wrapper would guess them)."""
    run_id = finished_run(local_store(), {"big.bin": os.urandom(64 << 10), "small.txt": b"s"})
    out = tmp_path / "out"
    out.mkdir()
    pull = f"{CLOUD_RUN} pull {run_id} --output-dir {out}"
    # too little room: refused before anything is written
    r = _confined(f"mount -t tmpfs -o size=32k tmpfs {out} && {{ {pull}; rc=$?; ls -A {out}; exit $rc; }}", tmp_path)
    line = one_line(r)
    assert "the results need" in line and "free some space or pull into another --output-dir; nothing was changed" in line
    assert r.stdout == ""
    # room for the bytes but no inodes left: the disk fills half-way, and the pull is undone
    r = _confined(f"mount -t tmpfs -o size=1m,nr_inodes=3 tmpfs {out} && {{ {pull}; rc=$?; ls -A {out}; exit $rc; }}",
                  tmp_path)
    assert "no space left on the device; free some space or pull into another --output-dir; nothing was changed" \
        in one_line(r)
    assert r.stdout == ""


# --- options ---------------------------------------------------------------------------------
def test_ls_shows_one_line_per_run_whatever_the_command(project, tmp_path):
    store = local_store()
    finished_run(store, {}, command="python3 train.py \\\n  --epochs 3\necho done")
    finished_run(store, {}, command="true")
    r = run(CLOUD_RUN, "ls")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 3, r.stdout
    assert sorted(line.split("  ")[-1] for line in lines[1:]) == ["python3 train.py \\ …", "true"]


def test_emulate_exports_the_target_it_emulates():
    text = (REPO / "tests" / "py" / "emulate.py").read_text()
    assert '"COMPUTE_TARGET": "gce"' in text and '"COMPUTE_TARGET": "ec2"' in text


@pytest.mark.parametrize("env,backend,message", [
    ({"RK_BUCKET": "gs://b/p"}, None, "RK_BUCKET=gs://b/p belongs to GCE, but with COMPUTE_TARGET=local cloud-run "
                                      "launches on the embedded provider; set COMPUTE_TARGET=gce, or pass --backend local"),
    ({"RK_BUCKET": "s3://b/p", "COMPUTE_TARGET": "gce"}, None, "RK_BUCKET=s3://b/p belongs to EC2, which GCE VMs cannot "
                                                               "reach; set RK_BUCKET to one of its gs:// buckets"),
    ({"RK_BUCKET": "gs://b/p"}, "ec2", "which EC2 VMs cannot reach; set RK_BUCKET to one of its s3:// buckets"),
    ({"RK_BUCKET": "/tmp/bucket"}, "gce", "RK_BUCKET=/tmp/bucket is a directory on this machine, which GCE VMs"),
])
def test_a_bucket_of_another_cloud_is_refused(project, monkeypatch, tmp_path, env, backend, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = run(CLOUD_RUN, *(["--backend", backend] if backend else []), "run", "true", "--max-hours", "1")
    assert message in one_line(r)
    assert not (tmp_path / "state" / "local").exists()


def test_the_embedded_provider_with_a_cloud_bucket_when_chosen(project, monkeypatch, gcs_bucket):
    monkeypatch.setenv("RK_BUCKET", f"gs://{gcs_bucket}/rk")
    assert run(CLOUD_RUN, "--backend", "local", "ls").returncode == 0
    monkeypatch.setenv("COMPUTE_TARGET", "sandbox")
    r = run(CLOUD_RUN, "ls")
    assert r.returncode == 0, r.stderr
    assert json.loads(run(CLOUD_RUN, "ls", "--json").stdout) == []
