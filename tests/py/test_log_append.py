"""A run's log grows in the bucket by what is new: the store contract for appending and for
reading from an offset on every backend, the VM agent's heartbeats sending only what the log
gained, the client's follow downloading only what it has not shown; and the requests that do
it held against the clouds' own definitions (storage.v1's discovery document for GCS compose,
botocore's service model and signer for S3's UploadPartCopy)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from log_follower import follow_while

from researchkit_py import protocol
from researchkit_py.clouds import http
from researchkit_py.errors import NotFound

KEY = "runs/r1/logs/run.log"


def grow(log: Path, n: int, tag: str) -> int:
    """n bytes of numbered lines more; the log's new size."""
    line = f"{tag} " + "x" * 90 + "\n"
    with open(log, "a") as f:
        f.write(line * (n // len(line)))
    return log.stat().st_size


def test_a_growing_log_is_appended_and_read_from_where_a_follower_stopped(store, tmp_path):
    log = tmp_path / "run.log"
    log.write_bytes(b"")
    with pytest.raises(NotFound):
        store.get_tail(KEY, 0)
    a = grow(log, 6 << 20, "a")  # past S3's smallest part, so S3 appends by a copy
    store.append_file(log, KEY, 0, a)
    b = grow(log, 300_000, "b")
    c = grow(log, 1000, "c")  # written after the push measured the log: not in this one
    store.append_file(log, KEY, a, b)
    assert store.get_bytes(KEY) == log.read_bytes()[:b]
    assert store.get_tail(KEY, a) == log.read_bytes()[a:b]
    assert store.get_tail(KEY, b) == b""
    store.append_file(log, KEY, a, b)  # repeated (a retry after a lost answer): not appended twice
    assert store.get_bytes(KEY) == log.read_bytes()[:b]
    store.append_file(log, KEY, b, c)
    assert store.get_bytes(KEY) == log.read_bytes()
    assert [o.key for o in store.list("runs/r1/logs/")] == [KEY]  # one object; no piece left behind
    store.append_file(log, KEY, 17, c)  # a writer that is wrong about the object: it is replaced, not spliced
    assert store.get_bytes(KEY) == log.read_bytes()


@pytest.mark.parametrize("store", ["gcs-vm", "s3-vm", "local"], indirect=True)
def test_heartbeats_send_only_what_the_log_gained(store, tmp_path, monkeypatch):
    """Ten heartbeats over a log that grows to 12 MiB send about 12 MiB (S3: and its first 5 MiB
    once more), not the sum of every size the log had (the whole log at each heartbeat sent 66
    MiB; on S3, the whole log while it was under 5 MiB sent 24 MiB)."""
    from researchkit_py.vm_agent import Agent, VMEnv

    cls = f"{type(store).__module__}:{type(store).__name__}"
    bucket_cls = "researchkit_py.clouds.gce.vm:VMBucket" if "gce" in cls else (
        "researchkit_py.clouds.ec2.vm:VMBucket" if "ec2" in cls else cls)
    root = tmp_path / "vm"
    root.mkdir()
    agent = Agent(VMEnv("r1", store.url, bucket_cls, cls, root, "local", dict(os.environ)))
    sent = count_sent(monkeypatch, store)
    for i in range(10):
        grow(agent.log_path, 1200 << 10, f"beat{i}")
        agent.heartbeat()
    size = agent.log_path.stat().st_size
    assert store.get_bytes(protocol.run_key("r1", protocol.LOG)) == agent.log_path.read_bytes()
    agent.heartbeat()  # nothing new: no log request at all
    # S3: under 5 MiB the new bytes go up as chunks, then the log whole once (test_log_chunks.py)
    limit = 1.05 * size + (5 << 20 if "ec2" in cls else 0)
    assert sum(sent) <= limit, (sum(sent), size)


def count_sent(monkeypatch, store) -> list[int]:
    """The bytes of every request body the store sends (the VM's HTTP, or the directory's writes)."""
    sent: list[int] = []
    real = http.request

    def request(method, url, headers=None, body=b"", **kw):
        n = len(body) if isinstance(body, bytes) else getattr(body, "length", 0)
        sent.append(n)
        return real(method, url, headers, body, **kw)

    monkeypatch.setattr(http, "request", request)
    if store.url.startswith("file://"):  # a directory: what it writes
        put, append = store._put_bytes, store._append_file

        def put_bytes(key, data):
            sent.append(len(data))
            put(key, data)

        def append_file(local, key, start, end):
            path = store._path(key)
            sent.append(end - start if path.is_file() and path.stat().st_size == start else end)
            append(local, key, start, end)

        monkeypatch.setattr(store, "_put_bytes", put_bytes)
        monkeypatch.setattr(store, "_append_file", append_file)
    return sent


def test_follow_downloads_only_what_it_has_not_shown(tmp_path, monkeypatch, capsys):
    """`logs --follow` and `wait`: every line shown once, in order, and the bytes read from the
    bucket are the log's size (the whole log at every poll was the old way)."""
    from researchkit_py.clouds.local.store import LocalStore
    from researchkit_py.settings import Settings

    store = LocalStore(tmp_path / "b", Settings(read_file=False))
    read: list[int] = []
    for name in ("_get_bytes", "_get_tail", "_get_range"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, real=real, key=name: (
            out := real(*a), read.append(len(out) if a[0] == KEY else 0))[0])
    log, lines = tmp_path / "run.log", []
    log.write_bytes(b"")

    def vm():
        pushed = 0
        for i in range(30):
            lines.append(f"line {i} é\n")
            with open(log, "a") as f:
                f.write(lines[-1])
            end = log.stat().st_size
            store.append_file(log, KEY, pushed, end)
            pushed = end
            time.sleep(0.01)
        store.write_json(protocol.run_key("r1", protocol.STATUS), protocol.status_record("r1", protocol.DONE))

    state, shown = follow_while(store, vm, monkeypatch, 0.02)
    assert state["phase"] == protocol.DONE
    assert shown == "".join(lines)
    assert sum(read) == log.stat().st_size


def test_gcs_compose_is_the_json_apis_own(gcs_bucket, tmp_path, monkeypatch):
    """The append's requests, against storage.v1's discovery document: objects.compose on the
    log (a POST to its /compose path, ifGenerationMatch among its parameters, a ComposeRequest
    body), and fake-gcs-server composes as GCS does (its answer: the log, one object)."""
    import json
    import re
    from urllib.parse import parse_qsl, urlsplit

    from conftest import vm_store
    from test_vm_side import discovery

    store = vm_store(SimpleNamespace(addfinalizer=lambda f: None, getfixturevalue=lambda n: gcs_bucket),
                     monkeypatch, "gcs")
    seen: list[tuple[str, str, bytes]] = []
    real = http.request
    monkeypatch.setattr(http, "request", lambda m, u, h=None, b=b"", **k: seen.append(
        (m, u, b if isinstance(b, bytes) else b"")) or real(m, u, h, b, **k))
    log = tmp_path / "run.log"
    a = grow(log, 1000, "a")
    store.append_file(log, KEY, 0, a)
    store.append_file(log, KEY, a, grow(log, 1000, "b"))
    assert store.get_bytes(KEY) == log.read_bytes()
    doc = discovery()
    compose = doc["resources"]["objects"]["methods"]["compose"]
    posts = [(urlsplit(u), b) for m, u, b in seen if m == "POST" and u.split("?")[0].endswith("/compose")]
    assert len(posts) == 1
    url, body = posts[0]
    pattern = "^/" + doc["servicePath"] + re.sub(r"\{\w+\}", "[^/]+", compose["path"]) + "$"
    assert compose["httpMethod"] == "POST" and re.match(pattern, url.path), url.path
    assert set(dict(parse_qsl(url.query))) <= set(compose["parameters"]) | set(doc["parameters"])
    request = json.loads(body)
    schema = doc["schemas"]["ComposeRequest"]["properties"]
    assert set(request) <= set(schema)
    item = schema["sourceObjects"]["items"]["properties"]
    assert all(set(s) <= set(item) for s in request["sourceObjects"])
    assert [s["name"] for s in request["sourceObjects"]] == ["pre/fix/" + KEY, "pre/fix/" + KEY + ".append"]


def test_s3_upload_part_copy_is_botocores(monkeypatch):
    """The copy of the log as part 1, against botocore's service model (the operation's method,
    its query and header names) and its signer (the same request, the same signature)."""
    import botocore.session
    from test_vm_side import CREDS, botocore_headers, bucket

    from researchkit_py.clouds.ec2.vm import sign

    model = botocore.session.get_session().get_service_model("s3").operation_model("UploadPartCopy")
    members = model.input_shape.members
    assert model.http["method"] == "PUT"
    assert members["CopySource"].serialization["name"] == "x-amz-copy-source"
    assert members["CopySourceIfMatch"].serialization["name"] == "x-amz-copy-source-if-match"
    assert (members["PartNumber"].serialization["name"], members["UploadId"].serialization["name"]) == \
        ("partNumber", "uploadId")
    b = bucket(monkeypatch)
    url = b._url(KEY, [("partNumber", "1"), ("uploadId", "u p/1")])
    headers = {"x-amz-copy-source": "/my-bucket/pre/fix/runs/r1/logs/run.log", "x-amz-copy-source-if-match": '"e1"'}
    ours = sign("PUT", url, headers, protocol_sha(b""), CREDS, "eu-west-3", "20261123T101500Z")
    theirs = botocore_headers("PUT", url, headers, b"", "eu-west-3", "20261123T101500Z", monkeypatch)
    assert ours["authorization"] == theirs["authorization"]


def protocol_sha(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("store", ["gcs-vm"], indirect=True)
def test_a_log_composed_many_times_goes_up_whole_once(store, tmp_path, monkeypatch):
    """GCS counts a composite's components (and has capped them): at MAX_COMPONENTS the log goes
    up whole, which starts the count again. fake-gcs-server does not report componentCount, so
    GCS's count is played here over the emulator: 1 for an uploaded object, +1 per compose onto
    it, in the field storage.v1's Object schema names."""
    import json

    from test_vm_side import discovery

    from researchkit_py.clouds.gce import rest

    assert "componentCount" in discovery()["schemas"]["Object"]["properties"]
    monkeypatch.setattr(rest, "MAX_COMPONENTS", 3)
    count = {"n": 0}
    real_call = store.vm.call

    def call(method, path, query=None, **kw):
        resp = real_call(method, path, query, **kw)
        name = (query or {}).get("name", "")
        if method == "POST" and name.endswith(KEY):
            count["n"] = 1
        elif method == "POST" and path.endswith("/compose"):
            count["n"] += 1
        elif method == "GET" and path == store.vm.objects(KEY) and not query:
            resp.data = json.dumps({**json.loads(resp.data), "componentCount": count["n"]}).encode()
        return resp

    monkeypatch.setattr(store.vm, "call", call)
    log = tmp_path / "run.log"
    ends = [grow(log, 10_000, f"l{i}") for i in range(6)]
    store.append_file(log, KEY, 0, ends[0])
    sent = count_sent(monkeypatch, store)
    for start, end in zip(ends, ends[1:], strict=False):
        sent.clear()
        store.append_file(log, KEY, start, end)
        sizes = [n for n in sent if n >= 9_000]
        assert sizes == ([end] if start == ends[2] else [end - start]), (start, sizes)
    assert store.get_bytes(KEY) == log.read_bytes()
