"""A run's log on S3 while it is shorter than S3's smallest part (5 MiB): each push's new bytes
as a chunk beside the log, read after it by followers; written whole once past 5 MiB or at the
end, the chunks removed (vm_log.py, lifecycle/monitor.py). Against moto, with the VM's own
store (standard library, credentials from a metadata server) writing and the client's (the same
requests, the user's credentials) reading; every request the VM sends held against botocore's S3 service model, and the final
log read back with the real AWS CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import pytest
from log_follower import follow_while

from researchkit_py import protocol, vm_log
from researchkit_py.clouds import http
from researchkit_py.lifecycle import monitor

MIB = 1 << 20
LOG = protocol.run_key("r1", protocol.LOG)


class Run:
    """A VM agent writing run r1's log into a moto bucket, and a client reading it."""

    def __init__(self, request, monkeypatch, tmp_path: Path):
        from conftest import vm_store

        from researchkit_py.clouds.registry import open_store
        from researchkit_py.settings import Settings
        from researchkit_py.vm_agent import Agent, VMEnv

        vm = vm_store(request, monkeypatch, "s3")
        self.bucket, self.url = vm.bucket, vm.url
        root = tmp_path / "vm"
        root.mkdir()
        self.agent = Agent(VMEnv("r1", vm.url, "researchkit_py.clouds.ec2.vm:VMBucket",
                                 "researchkit_py.clouds.ec2.rest:S3RestStore", root, "local", dict(os.environ)))
        self.client = open_store(vm.url, Settings(read_file=False))
        self.ctx = SimpleNamespace(store=self.client)
        self.n = 0

    def grow(self, n: int) -> None:
        """n bytes more, in numbered lines."""
        with open(self.agent.log_path, "a") as f:
            while n > 0:
                line = f"line {self.n} " + "x" * 80 + "\n"
                f.write(line[:n])
                n -= len(line)
                self.n += 1

    def log(self) -> bytes:
        return self.agent.log_path.read_bytes()

    def keys(self) -> list[str]:
        return [o.key for o in self.client.list(protocol.run_key("r1", "logs/"))]

    def chunks(self) -> list[str]:
        return [k for k in self.keys() if k != LOG]

    def aws_cat(self) -> bytes:
        """The final log as a user gets it: `aws s3 cp s3://…/run.log -`."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        r = subprocess.run(["aws", "s3", "cp", f"{self.url}/{LOG}", "-", "--endpoint-url", env["AWS_ENDPOINT_URL"]],
                           capture_output=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture
def run(request, monkeypatch, tmp_path) -> Run:
    return Run(request, monkeypatch, tmp_path)


def test_a_short_log_grows_as_chunks_and_ends_as_one_object(run):
    """Three heartbeats of a short log: three chunks, and a reader (`logs`, a crashed run's
    log) gets the log from them; the end writes the log whole and removes them."""
    for i in range(3):
        run.grow(1000 + i)
        run.agent.heartbeat()
        assert monitor.read_log(run.ctx, "r1") == run.log()
    assert run.keys() == [protocol.log_chunk_key("r1", s) for s in (0, 1000, 2001)]
    assert monitor.has_log(run.ctx, "r1")  # what `cloud-run run` says it kept of a stopped run
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]
    assert run.aws_cat() == run.log()
    assert monitor.read_log(run.ctx, "r1") == run.log()


def test_a_log_past_5_mib_is_written_whole_once_then_grows_by_copies(run, monkeypatch):
    run.grow(3 * MIB)
    run.agent.heartbeat()
    run.grow(3 * MIB)
    sent = _requests(monkeypatch)
    run.agent.heartbeat()  # past 5 MiB: the log whole once, the chunk removed
    assert run.keys() == [LOG]
    assert [m for m, u, *_ in sent if m in ("PUT", "DELETE") and "/logs/" in u] == ["PUT", "DELETE"]
    run.grow(MIB)
    sent.clear()
    run.agent.heartbeat()  # by a copy: only the new MiB goes up
    assert sum(n for *_, n in sent) < 1.01 * MIB
    run.grow(10)
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]
    assert run.aws_cat() == run.log()


def test_a_push_cut_short_puts_the_same_chunk_again(run, monkeypatch):
    """A heartbeat killed after its chunk went up, before it noted so: the next push sends the
    same bytes under the same key before the new ones, so a follower that read the chunk goes
    on where it ended, and nothing shows twice."""
    run.grow(500)
    run.agent.heartbeat()
    run.grow(700)
    real_save, saves = vm_log._Pusher.save, []

    def save(self):
        saves.append(dict(self.state))
        if len(saves) == 2:  # the one after the chunk's PUT
            raise KeyboardInterrupt("killed")
        real_save(self)

    monkeypatch.setattr(vm_log._Pusher, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run.agent.push_log()
    monkeypatch.setattr(vm_log._Pusher, "save", real_save)
    shown = monitor.read_log_from(run.ctx, "r1", 0)
    assert shown == run.log()
    first = run.client.get_bytes(protocol.log_chunk_key("r1", 500))
    run.grow(300)
    run.agent.heartbeat()
    assert run.client.get_bytes(protocol.log_chunk_key("r1", 500)) == first
    assert shown + monitor.read_log_from(run.ctx, "r1", len(shown)) == run.log()
    assert run.keys() == [protocol.log_chunk_key("r1", s) for s in (0, 500, 1200)]


def test_a_log_short_for_long_is_written_whole_every_few_chunks(run, monkeypatch):
    """A line a heartbeat for hours: at MAX_CHUNKS the log goes up whole and its chunks go, so
    they stay few; readers from anywhere get the log, once."""
    monkeypatch.setattr(vm_log, "MAX_CHUNKS", 3)
    shown = b""
    for _ in range(7):  # 3 chunks, whole, 3 chunks
        run.grow(100)
        run.agent.heartbeat()
        assert len(run.chunks()) <= 3
        assert monitor.read_log(run.ctx, "r1") == run.log()
        shown += monitor.read_log_from(run.ctx, "r1", len(shown))
        assert shown == run.log()
    assert run.keys() == [LOG, *run.chunks()] and run.chunks()  # the log written whole, and chunks after it
    run.grow(100)
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]
    assert run.aws_cat() == run.log()


def test_the_last_push_after_a_whole_write_leaves_one_object(run, monkeypatch):
    """The log written whole at MAX_CHUNKS, then a few bytes more at the end: they do not become
    a chunk of their own; the finished log is one object."""
    monkeypatch.setattr(vm_log, "MAX_CHUNKS", 2)
    for _ in range(3):
        run.grow(100)
        run.agent.heartbeat()
    assert run.keys() == [LOG]
    run.grow(100)
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]
    assert run.aws_cat() == run.log()


def test_a_chunk_that_will_not_go_goes_at_the_next_push(run, monkeypatch, capsys):
    """A removal refused (a role without s3:DeleteObject, an outage): the log is whole, the chunk
    waits for a later push, and the VM says so once, not at every heartbeat."""
    run.grow(100)
    run.agent.heartbeat()
    store = run.agent.store
    real = store.delete
    monkeypatch.setattr(store, "delete", lambda key: (_ for _ in ()).throw(ConnectionError("refused")))
    run.agent.push_log(final=True)
    run.grow(100)
    run.agent.push_log(final=True)
    assert capsys.readouterr().err.count("could not remove a chunk") == 1
    assert run.keys() == [LOG, protocol.log_chunk_key("r1", 0)]
    assert monitor.read_log(run.ctx, "r1") == run.log()  # the chunk is before the log's end: not read
    monkeypatch.setattr(store, "delete", real)
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]


def test_a_vm_without_the_rest_of_the_agent_sends_its_log_whole(run, monkeypatch):
    """A setup that failed before the rest of the agent (vm_log.py) came: the final log, whole."""
    monkeypatch.setitem(sys.modules, "researchkit_py.vm_log", None)  # import fails
    run.grow(2000)
    run.agent.push_log(final=True)
    assert run.keys() == [LOG]
    assert run.aws_cat() == run.log()


def test_follow_on_s3_shows_every_line_once_and_reads_only_what_is_new(run, monkeypatch):
    """`logs --follow` and `wait` against the client's store while the VM's heartbeats write
    chunks, then the whole log past 5 MiB, then copies: each byte read from the bucket once."""
    read: list[int] = []
    for name in ("_get_bytes", "_get_tail"):
        real = getattr(run.client, name)
        monkeypatch.setattr(run.client, name, lambda *a, real=real: (
            out := real(*a), read.append(len(out) if a[0].startswith(LOG) else 0))[0])
    def vm():
        for size in (1000, 2 * MIB, 2 * MIB, 2 * MIB, 1000):
            run.grow(size)
            run.agent.heartbeat()
            time.sleep(0.2)
        run.agent.finish(protocol.DONE, "0", protocol.EXIT)

    state, shown = follow_while(run.client, vm, monkeypatch, 0.05)
    assert state["phase"] == protocol.DONE
    log = run.log()
    assert shown.encode() == log
    assert sum(read) == len(log)


def test_every_request_of_the_log_is_in_botocores_s3_model(run, monkeypatch):
    """Each request the VM sends for its log (chunk puts, the whole log, the copy and its part,
    the removals) is an operation of botocore's S3 model: its method and path, the query its URI
    fixes, its required members, and every query and header named among its members."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3")
    sent = _requests(monkeypatch)
    for size in (1000, 6 * MIB, MIB):
        run.grow(size)
        run.agent.heartbeat()
    run.agent.push_log(final=True)
    seen = {_operation(model, m, u, h) for m, u, h, _ in sent}
    assert {"PutObject", "HeadObject", "DeleteObject", "CreateMultipartUpload", "UploadPartCopy", "UploadPart",
            "CompleteMultipartUpload"} <= seen


SIGNING = {"host", "x-amz-date", "x-amz-content-sha256", "authorization", "x-amz-security-token"}


def _operation(model, method: str, url: str, headers: dict) -> str:
    """The one S3 operation a request is, from botocore's model (it fails when none or several fit)."""
    parts = urlsplit(url)
    query = {k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    ours = {h.lower() for h in headers} - SIGNING
    has_key = parts.path.strip("/").count("/") >= 1  # /bucket/key (path style, as against moto)
    fits = []
    for name in model.operation_names:
        op = model.operation_model(name)
        path, _, fixed = op.http["requestUri"].partition("?")
        if op.http["method"] != method or ("{Key+}" in path) != has_key:
            continue
        fixed_names = {p.partition("=")[0].lower() for p in fixed.split("&") if p}
        members = op.input_shape.members if op.input_shape else {}
        by_location = {loc: {m.serialization.get("name", n).lower() for n, m in members.items()
                             if m.serialization.get("location") == loc} for loc in ("querystring", "header")}
        required = {members[n].serialization.get("name", n).lower() for n in op.input_shape.required_members
                    if members[n].serialization.get("location") in ("querystring", "header")} if members else set()
        if fixed_names <= query and query <= fixed_names | by_location["querystring"] \
                and ours <= by_location["header"] and required <= query | ours:
            fits.append(name)
    assert len(fits) == 1, (method, url, sorted(ours), fits)
    return fits[0]


def _requests(monkeypatch) -> list[tuple[str, str, dict, int]]:
    """Every request the VM's HTTP sends: method, URL, headers, the body's length."""
    sent: list[tuple[str, str, dict, int]] = []
    real = http.request

    def request(method, url, headers=None, body=b"", **kw):
        n = len(body) if isinstance(body, bytes) else getattr(body, "length", 0)
        sent.append((method, url, dict(headers or {}), n))
        return real(method, url, headers, body, **kw)

    monkeypatch.setattr(http, "request", request)
    return sent
