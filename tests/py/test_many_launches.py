"""Many launches from one command (`detached --exp 1 … 20`, lifecycle/many.py) against the fake
Compute API and fake-gcs-server, no VM booted: one bundle, one API client, the requests in
parallel, and a refused launch reported on its own without losing any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_gce import FakeGCE, _op

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gce(project, gcs_bucket, monkeypatch):
    """The fake Compute API whose inserts are watched: how many are in flight at once."""
    fake = FakeGCE()
    monkeypatch.setenv("GCE_PROJECT", "test-proj")
    monkeypatch.setenv("RK_GCE_API_ENDPOINT", fake.url)
    monkeypatch.setenv("RK_BUCKET", f"gs://{gcs_bucket}/rk")
    fake.in_flight, fake.most, fake.refuse = 0, 0, set()
    lock, insert = threading.Lock(), fake.insert

    def watched(project_, zone, body, request_id):
        if any(body["name"].startswith(f"rk-exp{n}-") for n in fake.refuse):  # GCE's quota refusal, this VM only
            return 200, _op(project_, zone, "insert", body["name"], "QUOTA_EXCEEDED")
        with lock:
            fake.in_flight += 1
            fake.most = max(fake.most, fake.in_flight)
        time.sleep(0.2)  # an insert takes a while on GCE: long enough to see whether others overlap it
        try:
            return insert(project_, zone, body, request_id)
        finally:
            with lock:
                fake.in_flight -= 1

    fake.insert = watched
    (project / "scripts").mkdir()
    (project / "scripts" / "run_experiment.py").write_text("print('experiment')\n")
    yield fake
    fake.stop()


def detached(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "researchkit_py.detached", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)


def manifests(bucket_env: str) -> dict[str, dict]:
    from researchkit_py.clouds.registry import open_store

    store = open_store(bucket_env)
    return {o.key.split("/")[1]: json.loads(store.get_bytes(o.key)) for o in store.list("runs/")
            if o.key.endswith("/manifest.json")}


def test_twenty_experiments_are_requested_in_parallel_from_one_bundle(gce, monkeypatch):
    from researchkit_py import bundle
    from researchkit_py import detached as detached_mod
    from researchkit_py.clouds.gce import compute

    made, sessions = [], []
    real_bundle, real_session = bundle.make_bundle, compute.session
    monkeypatch.setattr(bundle, "make_bundle", lambda *a, **k: made.append(1) or real_bundle(*a, **k))
    monkeypatch.setattr(compute, "session", lambda *a, **k: sessions.append(1) or real_session(*a, **k))
    assert detached_mod.main(["--exp", *map(str, range(1, 21))]) == 0
    assert len(gce.inserts()) == 20 and len(gce.instances) == 20
    assert made == [1] and sessions == [1]
    assert "google.cloud.compute_v1" not in sys.modules  # its import alone took 2.4 s of CPU
    assert gce.most > 1  # requests overlapped: one at a time would never have two in flight


def test_a_refused_launch_is_reported_and_the_others_go_on(gce):
    gce.refuse = {3, 7}
    r = detached("--exp", *map(str, range(1, 11)))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stdout.split()) == 8
    for n in (3, 7):
        assert f"Experiment {n} was not launched: " in r.stderr and "QUOTA_EXCEEDED" in r.stderr
    assert "2 of 10 experiments were not launched" in r.stderr.splitlines()[-1]
    runs = manifests(os.environ["RK_BUCKET"])
    assert len(runs) == 10  # every launch has its record: none unaccounted for
    assert {m["instance"] for m in runs.values() if m["experiment"] not in ("exp3", "exp7")} == {
        name for (_, _, name) in gce.instances}
    rows = json.loads(detached("list", "--json").stdout)
    failed = {r["experiment"]: r for r in rows if r["phase"] == "FAILED"}
    assert set(failed) == {"exp3", "exp7"} and all(r["cause"] == "boot_error" for r in failed.values())


def test_list_and_logs_take_the_newest_run_of_an_experiment(gce):
    first = detached("--exp", "5").stdout.strip()
    time.sleep(1.1)  # run ids carry their second
    second = detached("--exp", "5").stdout.strip()
    rows = json.loads(detached("list", "--exp", "5", "--json").stdout)
    assert [r["run_id"] for r in rows] == [second, first]
    assert [r["run_id"] for r in json.loads(detached("list", "--json", "--limit", "1").stdout)] == [second]
    from researchkit_py.detached import _pick
    from researchkit_py.lifecycle import Context
    from researchkit_py.settings import Settings

    ctx = Context.open(Settings(), "gce")
    assert _pick(ctx, 5, None) == second and _pick(ctx, 5, first) == first


def sent(value):
    """JSON as its REST transport sends a message: empty lists and maps left out."""
    if isinstance(value, dict):
        return {k: sent(v) for k, v in value.items() if v not in ([], {})}
    if isinstance(value, list):
        return [sent(v) for v in value]
    return value


def test_the_instance_we_send_is_the_sdks_instance(gce):
    """Our REST body against google-cloud-compute's own Instance type (what its client would
    send): every field known to it, and the same JSON back."""
    from google.cloud import compute_v1

    from researchkit_py.clouds.base import InstanceRequest
    from researchkit_py.clouds.gce.provider import GCEProvider
    from researchkit_py.settings import Settings

    provider = GCEProvider(Settings())
    for req in (InstanceRequest("rk-a", "a", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 60),
                InstanceRequest("rk-b", "b", "#!/bin/bash\ntrue", {}, 3600, "n1-standard-8", True, 2, "nvidia-tesla-t4",
                                True)):
        body = provider.vm_config(req).instance_body("us-central1-a")
        sdk = compute_v1.Instance.from_json(json.dumps(body), ignore_unknown_fields=False)
        assert sent(json.loads(compute_v1.Instance.to_json(sdk))) == sent(body)
        provider.create(req)
    assert [e["body"] for e in gce.inserts()] == [provider.vm_config(r).instance_body("us-central1-a") for r in (
        InstanceRequest("rk-a", "a", "#!/bin/bash\ntrue", {"researchkit-tool": "researchkit"}, 60),
        InstanceRequest("rk-b", "b", "#!/bin/bash\ntrue", {}, 3600, "n1-standard-8", True, 2, "nvidia-tesla-t4", True))]
