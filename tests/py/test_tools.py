"""tools/artifact-store, tools/preflight, cloud-run --max-cost, and the tools' import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from researchkit_py.artifacts import ArtifactStore, parse_size, read_manifest
from researchkit_py.errors import KitError

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy" / "experiments" / "exp-001-toy-logreg.md"


def tool(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / name), *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120)


@pytest.fixture
def results(project) -> Path:
    d = project / "results" / "exp-001"
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(300_000))
    (d / "weights.bin").write_bytes(os.urandom(200_000))
    (d / "metrics.json").write_text('{"a": 1}')
    return d


def test_artifact_round_trip_on_every_backend(store, project, results):
    arts = ArtifactStore(project, store)
    original = (results / "model.bin").read_bytes()
    pushed = arts.push_dir(project / "results", threshold=parse_size("100K"))
    assert sorted(Path(r["path"]).name for r in pushed) == ["model.bin", "weights.bin"]
    assert all(r["uploaded"] for r in pushed)
    assert (results / "model.bin").is_symlink() and (results / "model.bin").read_bytes() == original
    assert not (results / "metrics.json").is_symlink()
    manifest = read_manifest(results)
    assert manifest["model.bin"]["key"] == f"artifacts/{manifest['model.bin']['sha256']}"
    assert (project / ".artifact-cache" / ".gitignore").read_text() == "*\n"
    # the same content again is not uploaded twice
    (results / "copy.bin").write_bytes(original)
    assert arts.push(results / "copy.bin")["uploaded"] is False
    # a fresh clone: no cache, links dangling → hydrate restores them from the bucket
    import shutil

    shutil.rmtree(project / ".artifact-cache")
    assert {arts.state(d, n, e) for d, n, e in arts.entries(results)} == {"missing"}
    actions = {Path(r["path"]).name: r["action"] for r in arts.hydrate(project / "results")}
    # copy.bin comes first and fetches the content it shares with model.bin: each content once
    assert actions == {"copy.bin": "downloaded", "model.bin": "none", "weights.bin": "downloaded"}
    assert (results / "model.bin").read_bytes() == original
    assert all(r["ok"] for r in arts.verify(results))


def test_verify_catches_corruption_and_hydrate_keeps_user_files(tmp_path, project, results):
    r = tool("artifact-store", "push", str(results / "model.bin"), cwd=project)
    assert r.returncode == 0, r.stderr
    cached = Path(os.path.realpath(results / "model.bin"))
    cached.write_bytes(b"tampered")
    v = tool("artifact-store", "verify", "results", "--json", cwd=project)
    assert v.returncode == 1 and "1 artifact(s) failed verification" in v.stderr
    # a real file the user put where a link was is never replaced by hydrate
    (results / "model.bin").unlink()
    (results / "model.bin").write_text("my own")
    h = json.loads(tool("artifact-store", "hydrate", "results", "--json", cwd=project).stdout)
    assert h[0]["state"] == "local-file" and (results / "model.bin").read_text() == "my own"


def test_hostile_manifests_are_refused(project, results):
    (results / ".artifacts.json").write_text(json.dumps({"../../escape": {"sha256": "0" * 64, "size": 1, "key": "k"}}))
    r = tool("artifact-store", "hydrate", "results", cwd=project)
    assert r.returncode == 1 and "not a plain file name" in r.stderr and len(r.stderr.splitlines()) == 1
    (results / ".artifacts.json").write_text(json.dumps({"x": {"sha256": "../../etc", "size": 1, "key": "k"}}))
    r = tool("artifact-store", "status", "results", cwd=project)
    assert r.returncode == 1 and "not a sha256" in r.stderr


def test_altered_bucket_object_is_refused(project, results, tmp_path):
    from researchkit_py.clouds.registry import open_store

    store = open_store(f"file://{tmp_path / 'bucket'}")
    arts = ArtifactStore(project, store)
    entry = arts.push(results / "model.bin")
    store.put_bytes(entry["key"], b"swapped in the bucket")
    import shutil

    shutil.rmtree(project / ".artifact-cache")
    with pytest.raises(KitError, match="does not match its sha256"):
        arts.hydrate(results)


@pytest.mark.parametrize("threshold", ["10", "1.5K", "10M", "2g", "5MB"])
def test_sizes(threshold):
    assert parse_size(threshold) > 0


def test_bad_threshold(project, results):
    r = tool("artifact-store", "push-dir", "results", "--threshold", "big", cwd=project)
    assert r.returncode == 2 and "write a size like" in r.stderr


# --- preflight -----------------------------------------------------------------------
def spec_with(tmp_path: Path, profile: str, budget: str = "- max_gpu_hours: 2\n- max_cost_usd: 3\n") -> Path:
    text = TOY.read_text()
    head, _, _ = text.partition("### Compute Profile")
    p = tmp_path / "experiments" / "exp-042-x.md"
    p.parent.mkdir(exist_ok=True)
    p.write_text(f"{head}### Compute Profile\n```yaml\n{profile}\n```\n\n## Budget\n{budget}")
    return p


PROFILE = ("compute_type: {ct}\nestimated_rows: 1000000\nmodel_type: xgboost\nsequential_fits: 5\n"
           "parallelizable: {par}\nmemory_gb: {mem}\ngpu_type: {gpu}\nestimated_wall_hours: {hours}")


@pytest.mark.parametrize("fields,where,itype", [
    (dict(ct="cpu", par="false", mem=1, gpu="none", hours=0.2), "local", ""),
    (dict(ct="gpu", par="false", mem=16, gpu="A10G", hours=2), "remote", "g5.xlarge"),
    (dict(ct="cpu", par="false", mem=100000, gpu="none", hours=0.5), "remote", "r6i.16xlarge"),
    (dict(ct="cpu", par="true", mem=4, gpu="none", hours=6), "remote", "c6i.16xlarge"),
    (dict(ct="cpu", par="false", mem=4, gpu="none", hours=6), "remote", "c6i.xlarge"),
])
def test_preflight_recommendations(tmp_path, fields, where, itype):
    r = tool("preflight", str(spec_with(tmp_path, PROFILE.format(**fields))), "--json")
    assert r.returncode == 0, r.stderr
    advice = json.loads(r.stdout)
    assert (advice["where"], advice["instance_type"]) == (where, itype)
    if where == "remote":
        assert advice["worst_case_cost_usd"] == round(advice["price_per_hour"] * 2, 2)  # × max_gpu_hours


def test_preflight_warns_over_budget_and_speaks_to_the_agent(tmp_path):
    spec = spec_with(tmp_path, PROFILE.format(ct="gpu", par="true", mem=200, gpu="A100", hours=10))
    r = tool("preflight", str(spec))
    assert r.stdout.startswith("## Compute Advisory (preflight)\nRecommendation: REMOTE on ec2 p4d.24xlarge")
    assert "WARNING: the worst case exceeds the spec's max_cost_usd." in r.stdout


@pytest.mark.parametrize("profile,message", [
    ("compute_type: cpu", "compute profile field estimated_rows is missing"),
    (PROFILE.format(ct="cpu", par="false", mem="lots", gpu="none", hours=1), "field memory_gb must be a number, not 'lots'"),
    ("compute_type: [", "valid YAML in the compute profile"),
])
def test_preflight_bad_profiles_are_one_line(tmp_path, profile, message):
    r = tool("preflight", str(spec_with(tmp_path, profile)))
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_preflight_without_profile(tmp_path):
    p = tmp_path / "e.md"
    p.write_text("# e\n\n## Hypothesis\nx\n")
    r = tool("preflight", str(p))
    assert r.returncode == 1 and "needs a '### Compute Profile' section" in r.stderr


# --- cloud-run --max-cost, import hygiene ----------------------------------------------
def test_max_cost_refuses_before_creating_anything(project, tmp_path, monkeypatch):
    monkeypatch.setenv("RK_PRICE_PER_HOUR", "3")
    r = tool("cloud-run", "run", "true", "--max-hours", "2", "--max-cost", "5", cwd=project)
    assert r.returncode == 1
    assert "worst case $6.00 (2 h of this machine) exceeds --max-cost $5.00" in r.stderr
    assert not (tmp_path / "state" / "local" / "bucket" / "runs").exists()
    ok = tool("cloud-run", "run", "true", "--max-hours", "1", "--max-cost", "5", "--quiet", cwd=project)
    assert ok.returncode == 0, ok.stderr
    manifest = next((tmp_path / "state" / "local" / "bucket" / "runs").glob("*/manifest.json"))
    assert json.loads(manifest.read_text())["worst_case_cost_usd"] == 3.0


def test_a_project_with_its_own_researchkit_py_does_not_shadow_the_kit(project, tmp_path):
    fake = project / "researchkit_py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the project copy was imported')\n")
    r = tool("cloud-run", "run", 'mkdir -p "$RESULTS_DIR"; echo ok > "$RESULTS_DIR/x"', "--output-dir",
             str(tmp_path / "o"), "--quiet", cwd=project)
    assert r.returncode == 0, r.stderr  # neither the client nor the VM (whose bundle holds the copy) used it
    assert (tmp_path / "o" / "x").read_text() == "ok\n"
