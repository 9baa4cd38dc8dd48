"""GCE: our Compute REST calls (held against google-cloud-compute's types in
test_many_launches.py) against our fake Compute API, real
google-cloud-storage against fake-gcs-server, and fake VMs that boot from the rendered
startup script and delete themselves through the API with their metadata token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import assert_cycle_synced_and_confirmed, run_toy_cycle

REPO = Path(__file__).resolve().parents[2]
RUN_EXPERIMENT = '''import argparse, json, os, sys
ap = argparse.ArgumentParser()
ap.add_argument("--exp", type=int)
ap.add_argument("--quick", action="store_true")
ap.add_argument("--parallel", action="store_true")
a = ap.parse_args()
print(f"experiment {a.exp} quick={a.quick} parallel={a.parallel}", flush=True)
out = os.path.join(os.environ["RESULTS_DIR"], f"exp{a.exp}")
os.makedirs(out, exist_ok=True)
json.dump({"exp": a.exp, "score": 0.9 + a.exp / 100}, open(os.path.join(out, "metrics.json"), "w"))
sys.exit(int(os.environ.get("EXIT_WITH", "0")) if a.exp == 9 else 0)
'''


@pytest.fixture
def gce(gce, project):
    """conftest's fake GCE, with a scripts/run_experiment.py in the project, as gcloud-era projects have."""
    (project / "scripts").mkdir()
    (project / "scripts" / "run_experiment.py").write_text(RUN_EXPERIMENT)
    return gce


def detached(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "researchkit_py.detached", *args], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def cloud_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", "gce", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=120)


def runs(exp: int | None = None) -> list[dict]:
    return json.loads(detached("list", *(["--exp", str(exp)] if exp else []), "--json", check=True).stdout)


# --- integration: request shape, idempotency, zones --------------------------------------
def test_instance_request_shape_and_no_credentials(gce, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/home/u/secret-key.json")
    run_id = detached("--exp", "1", check=True).stdout.strip()
    gce.vms.wait_all_gone()
    (insert,) = gce.inserts()
    body = insert["body"]
    assert insert["query"]["requestId"]
    assert body["name"] == f"rk-{run_id}"
    assert body["scheduling"] == {"maxRunDuration": {"seconds": str(4 * 3600)}, "instanceTerminationAction": "DELETE"}
    assert body["labels"]["researchkit-tool"] == "researchkit" and body["labels"]["researchkit-exp"] == "exp1"
    assert int(body["labels"]["researchkit-expires"]) > time.time()
    assert body["serviceAccounts"][0]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_write",
                                                    "https://www.googleapis.com/auth/compute"]
    assert body["machineType"].endswith("/machineTypes/n2-standard-4")
    assert body["disks"][0]["initializeParams"]["sourceImage"] == "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
    metadata = json.dumps(body)
    for secret in ("wJalrXUtnFEMI", "secret-key.json", "private_key", "AKIA"):
        assert secret not in metadata


def test_request_id_makes_inserts_idempotent(gce):
    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.gce.provider import GCEProvider
    from researchkit_py.settings import Settings

    gce.on_insert = None
    provider = GCEProvider(Settings())
    req = InstanceRequest("rk-same", "same-run", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 60)
    provider.create(req)
    provider.create(req)  # a retried request: same requestId, no second VM, no error
    assert gce.names() == ["rk-same"] and len(gce.inserts()) == 2
    assert gce.inserts()[0]["query"]["requestId"] == gce.inserts()[1]["query"]["requestId"]


def test_the_fakes_deletion_is_in_the_compute_apis_own_states(gce):
    """The fake's delete as GCE's: its operation RUNNING and the instance STOPPING until the
    instance is gone (values compute.v1's discovery document gives Operation.status and
    Instance.status), a second delete the same deletion; our delete returns once it is DONE."""
    import threading

    from test_gpu import _discovery

    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.gce.provider import GCEProvider
    from researchkit_py.settings import Settings

    doc = _discovery()["schemas"]
    gce.on_insert = None  # no VM: the deletion's states are what is looked at
    provider = GCEProvider(Settings())
    provider.create(InstanceRequest("rk-going", "going-run", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 60))
    zone = provider.get("rk-going").zone
    release = threading.Event()
    gce.on_delete = lambda *a: release.wait(30)  # the VM's shutdown, held
    try:
        code, op = gce.delete("test-proj", zone, "rk-going")
        again = gce.delete("test-proj", zone, "rk-going")[1]
        inst = gce.instances[("test-proj", zone, "rk-going")]
        assert code == 200 and (op["status"], inst["status"], again["name"]) == ("RUNNING", "STOPPING", op["name"])
        assert op["status"] in doc["Operation"]["properties"]["status"]["enum"]
        assert inst["status"] in doc["Instance"]["properties"]["status"]["enum"]
        done = threading.Thread(target=provider.delete, args=("rk-going",))
        done.start()
        done.join(1.0)
        assert done.is_alive(), "our delete returned while the operation was still RUNNING"
    finally:
        release.set()
    done.join(30)
    assert not done.is_alive() and gce.names() == []


def test_zone_fallback_cleans_up_and_records_the_zone(gce, monkeypatch):
    monkeypatch.setenv("GCE_ZONES", "us-central1-b,europe-west4-a")
    gce.fail_zones["us-central1-a"] = "ZONE_RESOURCE_POOL_EXHAUSTED"
    gce.partial_zones.add("us-central1-a")  # GCE left a half-made instance behind
    gce.fail_zones["us-central1-b"] = "QUOTA_EXCEEDED"
    run_id = detached("--exp", "1", check=True).stdout.strip()
    gce.vms.wait_all_gone()
    zones = [e["path"].split("/zones/")[1].split("/")[0] for e in gce.inserts()]
    assert zones == ["us-central1-a", "us-central1-b", "europe-west4-a"]
    deletes = [e["path"] for e in gce.log if e["method"] == "DELETE"]
    assert any("/zones/us-central1-a/" in p for p in deletes)
    (row,) = runs(1)
    assert (row["run_id"], row["zone"], row["phase"]) == (run_id, "europe-west4-a", "DONE")


def test_no_capacity_anywhere_is_one_line_and_leaves_nothing(gce):
    gce.fail_zones["us-central1-a"] = "ZONE_RESOURCE_POOL_EXHAUSTED"
    r = detached("--exp", "1")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "no capacity for n2-standard-4" in r.stderr
    assert gce.names() == []
    (row,) = runs()
    assert (row["phase"], row["cause"]) == ("FAILED", "boot_error")


def test_dry_run_creates_nothing(gce):
    r = detached("--exp", "1", "--quick", "--dry-run", check=True)
    assert r.stdout.startswith("#!/bin/bash") and "python scripts/run_experiment.py --exp 1 --quick --parallel" in r.stdout
    assert '"maxRunDuration"' in r.stderr and "nothing was created" in r.stderr
    assert gce.log == []
    from researchkit_py.clouds.registry import open_store

    assert open_store(os.environ["RK_BUCKET"]).list("") == []


def test_no_project_says_what_to_set(monkeypatch, tmp_path, project):
    monkeypatch.delenv("GCE_PROJECT", raising=False)
    r = detached("--exp", "1")
    assert r.returncode == 1
    assert r.stderr == ("detached: no GCP project: pass --project, set GCE_PROJECT in .orchestration-kit.env, "
                        "or run `gcloud config set project PROJECT_ID`\n")


def test_project_from_the_gcloud_config_file(tmp_path, monkeypatch):
    from researchkit_py.clouds.gce.provider import gcloud_config_project
    from researchkit_py.settings import Settings

    conf = tmp_path / "home" / ".config" / "gcloud"
    (conf / "configurations").mkdir(parents=True)
    (conf / "active_config").write_text("work")
    (conf / "configurations" / "config_work").write_text("[core]\nproject = from-gcloud\n")
    assert gcloud_config_project(Settings(tmp_path, {"HOME": str(tmp_path / "home")})) == "from-gcloud"


def test_missing_credentials_name_the_fix(monkeypatch, project):
    monkeypatch.setenv("GCE_PROJECT", "p")
    monkeypatch.setenv("RK_BUCKET", "gs://some-bucket")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(project / "absent.json"))
    r = detached("list")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "credentials" in r.stderr.lower()


# --- end to end on fake VMs -------------------------------------------------------------
def test_fire_and_forget_then_list_download_logs(gce, project):
    r = detached("--exp", "1", "--quick", check=True)
    run_id = r.stdout.strip()
    assert "python -m researchkit_py.detached list" in r.stderr and "You can close this terminal" in r.stderr
    gce.vms.wait_all_gone()
    (row,) = runs(1)
    assert (row["run_id"], row["phase"], row["exit_code"], row["cause"]) == (run_id, "DONE", 0, "exit")
    d = detached("download", "1", check=True)
    assert "1 files downloaded" in d.stderr
    metrics = project / "results" / "exp1" / run_id / "exp1" / "metrics.json"
    assert json.loads(metrics.read_text()) == {"exp": 1, "score": 0.91}
    log = detached("logs", "1", check=True).stdout
    assert "experiment 1 quick=True parallel=True" in log and "researchkit: DONE" in log
    # it deleted itself with its own metadata token, no gcloud
    (delete,) = [e for e in gce.log if e["method"] == "DELETE"]
    assert delete["auth"] == f"Bearer fake-token-rk-{run_id}" and delete["path"].endswith(f"/instances/rk-{run_id}")


def test_failing_experiment_keeps_exit_code_and_log_and_deletes_the_vm(gce, monkeypatch):
    monkeypatch.setenv("RK_DETACHED_COMMAND", "EXIT_WITH=3 python scripts/run_experiment.py --exp 9")
    detached("--exp", "9", check=True)
    gce.vms.wait_all_gone()
    (row,) = runs(9)
    assert (row["phase"], row["exit_code"], row["cause"]) == ("FAILED", 3, "exit")
    assert "experiment 9" in detached("logs", "9", check=True).stdout


def test_three_experiments_three_vms(gce):
    ids = detached("--exp", "1", "2", "3", check=True).stdout.split()
    assert len(set(ids)) == 3 and len({e["body"]["name"] for e in gce.inserts()}) == 3
    gce.vms.wait_all_gone()
    rows = runs()
    assert sorted(r["experiment"] for r in rows) == ["exp1", "exp2", "exp3"]
    assert all(r["phase"] == "DONE" for r in rows)


def test_spec_command_is_offered_for_its_experiment(gce, project):
    (project / "experiments").mkdir()
    spec = (REPO / "examples" / "toy" / "experiments" / "exp-001-toy-logreg.md").read_text()
    (project / "experiments" / "exp-002-toy.md").write_text(spec)
    (project / "train.py").write_text((REPO / "examples" / "toy" / "train.py").read_text())
    r = detached("--exp", "2", check=True)
    assert "experiments/exp-002-toy.md" in r.stderr
    gce.vms.wait_all_gone()
    detached("download", "2", "--output-dir", str(project / "out"), check=True)
    assert json.loads((project / "out" / "metrics.json").read_text())["accuracy"] == 0.92


def test_kill_an_experiment(gce):
    run_id = detached("--exp", "4", "--command", "sleep 600", check=True).stdout.strip()
    deadline = time.time() + 120  # a loaded machine boots slowly; the command outlasts the wait
    while runs(4)[0]["phase"] != "RUN" and time.time() < deadline:
        time.sleep(0.2)
    r = detached("kill", "4", check=True)
    assert f"{run_id}: VM deleted" in r.stderr
    gce.vms.wait_all_gone()
    assert runs(4)[0]["phase"] == "FAILED"


def test_default_bucket_is_created_private(gce, monkeypatch):
    monkeypatch.delenv("RK_BUCKET")
    detached("--exp", "1", check=True)
    gce.vms.wait_all_gone()
    from researchkit_py.clouds.gce.store import gcs_client

    bucket = gcs_client().get_bucket("test-proj-researchkit")
    assert [b.name for b in gcs_client().list_blobs(bucket, prefix="runs/")]


def test_experiment_cycle_with_compute_target_gce(gce, tmp_path):
    toy, r = run_toy_cycle(tmp_path, "gce")
    assert_cycle_synced_and_confirmed(r, "gce")
    (insert,) = gce.inserts()
    assert insert["body"]["labels"]["researchkit-exp"] == "exp-001-toy-logreg"
    assert gce.names() == []
    run_id = (toy / "results" / "exp-001-toy-logreg" / ".cloud-run-id").read_text().strip()
    assert run_id.startswith("exp-001-toy-logreg-")


def test_vm_is_isolated_and_uses_the_real_metadata_name(gce, vm_network, gcs_server, tmp_path):
    if vm_network is None:
        pytest.skip("fake VMs cannot get their own network namespace here: needs root, bwrap and ip")
    host_only = gcs_server.url  # listens on the host's 127.0.0.1: a VM must not reach it
    probe = (f'mkdir -p "$RESULTS_DIR"; hostname > "$RESULTS_DIR/hostname"; ip route show default | wc -l > "$RESULTS_DIR/routes"; '
             f'python3 -c "import urllib.request as u; u.urlopen(\'{host_only}\', timeout=2)" 2> /dev/null; '
             f'echo $? > "$RESULTS_DIR/reach"')
    run_id = detached("--exp", "5", "--command", probe, check=True).stdout.strip()
    gce.vms.wait_all_gone()
    detached("download", "5", "--output-dir", str(tmp_path / "o"), check=True)
    assert (tmp_path / "o" / "hostname").read_text().strip() == f"rk-{run_id}"
    assert (tmp_path / "o" / "routes").read_text().strip() == "0"
    assert (tmp_path / "o" / "reach").read_text().strip() != "0"
    meta_log = (gce.vms.vms[f"rk-{run_id}"]["root"] / "metadata.log").read_text()
    assert "metadata.google.internal instance/service-accounts/default/token" in meta_log
