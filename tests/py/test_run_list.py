"""Listing a bucket's runs (lifecycle/runlist.py): newest first, --limit, and the cache of
finished runs that makes listing a large bucket again cheap. The bucket is the embedded
provider's directory, its runs written straight into it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from researchkit_py import protocol
from researchkit_py.lifecycle import Context, list_runs
from researchkit_py.lifecycle.runlist import cache_path, newest_first
from researchkit_py.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx(project):
    return Context.open(Settings(project), "local")


def seed(ctx, n: int, *, start: int = 0, phase: str = protocol.DONE, experiment: str = "") -> list[str]:
    """n runs launched a minute apart (ids as protocol.new_run_id makes them), oldest first."""
    ids = []
    for i in range(start, start + n):
        stamp = f"20260101-{i // 60:02d}{i % 60:02d}00"
        run_id = f"exp{i % 3}-{stamp}-{i:08x}"
        manifest = protocol.RunManifest(
            run_id=run_id, provider="local", instance=protocol.instance_name(run_id), command=f"echo {i}",
            bundle="code/x.tar.gz", created_at=f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00Z",
            expires_at="2099-01-01T00:00:00Z", max_hours=1, heartbeat_seconds=1, experiment=experiment)
        ctx.store.write_json(protocol.run_key(run_id, protocol.MANIFEST), manifest.to_dict())
        ctx.store.write_json(protocol.run_key(run_id, protocol.STATUS), protocol.status_record(
            run_id, phase, exit_code=0 if phase == protocol.DONE else None, cause="exit"))
        ids.append(run_id)
    return ids


def cloud_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", "local", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=60)


class Reads:
    """Counts the bucket's reads and the provider's instance listings of one Context."""

    def __init__(self, ctx, monkeypatch):
        self.keys: list[str] = []
        self.listings = 0
        read, listing = ctx.store.read_json_or_none, ctx.provider.list

        def counted_read(key):
            self.keys.append(key)
            return read(key)

        def counted_list():
            self.listings += 1
            return listing()

        monkeypatch.setattr(ctx.store, "read_json_or_none", counted_read)
        monkeypatch.setattr(ctx.provider, "list", counted_list)


def test_runs_are_listed_newest_first_by_the_time_in_their_id():
    ids = ["zeta-20260101-000000-0000000a", "alpha-20260301-000000-0000000b", "not-ours", "mid-20260201-120000-0000000c"]
    assert newest_first(ids) == ["alpha-20260301-000000-0000000b", "mid-20260201-120000-0000000c",
                                 "zeta-20260101-000000-0000000a", "not-ours"]


def test_ls_shows_the_newest_runs_first_and_at_most_the_limit(ctx):
    ids = seed(ctx, 60)
    r = cloud_run("ls", "--json")
    assert r.returncode == 0, r.stderr
    assert [row["run_id"] for row in json.loads(r.stdout)] == ids[::-1][:50]  # the default limit
    assert [row["run_id"] for row in json.loads(cloud_run("ls", "--json", "--limit", "3").stdout)] == ids[:-4:-1]
    assert len(json.loads(cloud_run("ls", "--json", "--limit", "0").stdout)) == 60
    table = cloud_run("ls", "--limit", "2")
    assert table.stdout.splitlines()[1].startswith(ids[-1]) and "--limit 0 lists them all" in table.stderr


@pytest.mark.parametrize("bad", ["-1", "many"])
def test_a_bad_limit_is_one_line(ctx, bad):
    r = cloud_run("ls", "--limit", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "is not a number of runs" in r.stderr


def test_a_bucket_listed_before_reads_only_its_unfinished_runs(ctx, monkeypatch):
    done = seed(ctx, 20)
    running = seed(ctx, 2, start=20, phase=protocol.RUN)
    first = list_runs(ctx)
    reads = Reads(ctx, monkeypatch)
    assert list_runs(ctx) == first
    assert sorted({k.split("/")[1] for k in reads.keys}) == sorted(running)  # the finished ones come from the cache
    assert reads.listings == 1  # the running ones need the instances: listed once for both
    assert [r["run_id"] for r in first] == (done + running)[::-1]


def test_finished_runs_need_neither_records_nor_instances_the_second_time(ctx, monkeypatch):
    seed(ctx, 10)
    list_runs(ctx)
    reads = Reads(ctx, monkeypatch)
    assert len(list_runs(ctx)) == 10
    assert (reads.keys, reads.listings) == ([], 0)


def test_a_run_that_finishes_later_is_read_until_then(ctx, monkeypatch):
    (run_id,) = seed(ctx, 1, phase=protocol.RUN)
    assert list_runs(ctx)[0]["phase"] in (protocol.RUN, protocol.FAILED)  # no instance: maybe lost
    ctx.store.write_json(protocol.run_key(run_id, protocol.STATUS), protocol.status_record(
        run_id, protocol.DONE, exit_code=0, cause="exit"))
    assert list_runs(ctx)[0]["phase"] == protocol.DONE
    reads = Reads(ctx, monkeypatch)
    assert list_runs(ctx)[0]["phase"] == protocol.DONE and reads.keys == []


def test_a_limit_reads_only_the_newest_runs(ctx, monkeypatch):
    seed(ctx, 300)
    reads = Reads(ctx, monkeypatch)
    assert len(list_runs(ctx, limit=5)) == 5
    assert len(reads.keys) < 300  # a batch, not the bucket


def test_an_experiment_filter_with_a_limit_finds_older_runs(ctx):
    seed(ctx, 100, experiment="exp2")
    seed(ctx, 100, start=100, experiment="exp1")
    rows = list_runs(ctx, experiment="exp2", limit=3)
    assert [r["experiment"] for r in rows] == ["exp2"] * 3 and rows[0]["created_at"] == "2026-01-01T01:39:00Z"


def test_a_run_deleted_from_the_bucket_leaves_the_listing(ctx):
    ids = seed(ctx, 3)
    list_runs(ctx)
    for name in (protocol.MANIFEST, protocol.STATUS):
        ctx.store.delete(protocol.run_key(ids[1], name))
    (ctx.store.root / protocol.run_prefix(ids[1])).rmdir()
    assert [r["run_id"] for r in list_runs(ctx)] == [ids[2], ids[0]]


@pytest.mark.parametrize("damage", [b"{not json", b"\x00\xff" * 10, b'{"version": 1, "bucket": "x", "runs": []}',
                                    b'{"version": 1, "runs": {"a": 3}}', b"[]"])
def test_a_damaged_cache_is_ignored_and_rewritten(ctx, damage):
    ids = seed(ctx, 4)
    path = cache_path(ctx)
    path.parent.mkdir(parents=True)
    path.write_bytes(damage)
    r = cloud_run("ls", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert [row["run_id"] for row in json.loads(r.stdout)] == ids[::-1]
    assert set(json.loads(path.read_text())["runs"]) == set(ids)


def test_a_cache_from_another_bucket_is_not_used(ctx, monkeypatch):
    ids = seed(ctx, 2)
    list_runs(ctx)
    path = cache_path(ctx)
    data = json.loads(path.read_text())
    data["bucket"] = "gs://elsewhere"
    path.write_text(json.dumps(data))
    reads = Reads(ctx, monkeypatch)
    assert len(list_runs(ctx)) == 2 and len(reads.keys) == 4 and len(ids) == 2


def test_concurrent_listings_agree_and_leave_a_whole_cache(ctx):
    ids = seed(ctx, 120)
    results, errors = [], []

    def one():
        try:
            results.append([r["run_id"] for r in list_runs(Context.open(Settings(ctx.settings.root), "local"))])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(r == ids[::-1] for r in results)
    assert set(json.loads(cache_path(ctx).read_text())["runs"]) == set(ids)
    assert [p.name for p in cache_path(ctx).parent.iterdir()] == [cache_path(ctx).name]  # no temporary files left
