"""The VM's own way to its bucket, standard library only, held against the real things: the S3
signature against botocore's own signer on identical requests, the GCS requests against the
storage.v1 discovery document google-api-python-client ships, large files in parts against
moto and fake-gcs-server; and what the agent does with a failure (the final status's cause,
step and reason)."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from researchkit_py import protocol
from researchkit_py.clouds import http
from researchkit_py.clouds.ec2.vm import UNSIGNED, VMBucket, sign
from researchkit_py.errors import KitError, StorageError
from researchkit_py.settings import Settings

CREDS = {"AccessKeyId": "ASIAFAKEVMROLE", "SecretAccessKey": "vm-secret/+x", "Token": "vm-session-token=="}


def botocore_headers(method: str, url: str, headers: dict, body, region: str, stamp: str, monkeypatch,
                     unsigned: bool = False) -> dict:
    """What botocore's S3 signer adds to the same request, at the same time."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: when)
    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    if unsigned:
        req.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(Credentials(CREDS["AccessKeyId"], CREDS["SecretAccessKey"], CREDS["Token"]), "s3",
                              region).add_auth(req)
    return {k.lower(): v for k, v in req.headers.items()}


def bucket(monkeypatch, endpoint: str = "", name: str = "my-bucket") -> VMBucket:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return VMBucket(name, "pre/fix", Settings(read_file=False))


@pytest.mark.parametrize("endpoint", ["", "http://10.213.5.1:38211"], ids=["aws", "emulator"])
@pytest.mark.parametrize("case", ["put", "get-range", "list", "multipart", "file-unsigned", "odd-key"])
def test_sigv4_signature_is_botocores(monkeypatch, endpoint, case):
    b = bucket(monkeypatch, endpoint)
    key, query, body, headers, method = "runs/r1/status.json", [], b'{"phase": "RUN"}\n', {}, "PUT"
    if case == "put":
        headers = {"Content-Type": "application/octet-stream"}
    elif case == "get-range":
        method, body, headers = "GET", b"", {"Range": "bytes=10-19"}
    elif case == "list":
        method, body, key = "GET", b"", ""
        query = [("list-type", "2"), ("prefix", "pre/fix/runs/"), ("delimiter", "/"),
                 ("continuation-token", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")]
    elif case == "multipart":
        method, body, query = "POST", b"", [("uploads", "")]
    elif case == "odd-key":
        key, headers = "runs/r1/results/a b/ü+é=~(1)!*'.txt", {"Content-Type": "application/octet-stream"}
    url = b._url(key, query)
    payload = UNSIGNED if case == "file-unsigned" else __import__("hashlib").sha256(body).hexdigest()
    ours = sign(method, url, headers, payload, CREDS, "eu-west-3", "20261123T101500Z")
    theirs = botocore_headers(method, url, headers, body, "eu-west-3", "20261123T101500Z", monkeypatch,
                              unsigned=case == "file-unsigned")
    assert ours.pop("host") in url
    assert ours == theirs


def test_s3_urls_are_virtual_hosted_on_aws_and_path_style_on_an_endpoint(monkeypatch):
    assert bucket(monkeypatch)._url("runs/a b", []) == "https://my-bucket.s3.eu-west-3.amazonaws.com/pre/fix/runs/a%20b"
    assert bucket(monkeypatch, name="my.bucket")._url("k", [("uploads", "")]) == \
        "https://s3.eu-west-3.amazonaws.com/my.bucket/pre/fix/k?uploads="
    assert bucket(monkeypatch, "http://h:9")._url("", [("prefix", "a/b")]) == "http://h:9/my-bucket?prefix=a%2Fb"


class Scripted:
    """A one-route HTTP server that answers each request with the next of `replies`
    (status, headers, body), the last one for good; `seen` keeps (method, path, headers)."""

    def __init__(self, replies: list[tuple[int, dict, bytes]]):
        self.seen: list[tuple[str, str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body = replies[min(len(server.seen), len(replies)) - 1]
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def imds(monkeypatch):
    from fake_vm import MetadataServer

    meta = MetadataServer({"flavor": "aws", "name": "vm", "zone": "eu-west-3a", "instance_id": "i-1"})
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", meta.base + "/")
    monkeypatch.setenv("RK_STORAGE_BACKOFF", "0.01")
    yield meta
    meta.stop()


def test_s3_follows_the_bucket_to_its_region(imds, monkeypatch):
    moved = (301, {"x-amz-bucket-region": "ap-south-1"}, b"<Error><Code>PermanentRedirect</Code></Error>")
    server = Scripted([moved, (200, {}, b"")])
    try:
        b = bucket(monkeypatch, server.url)
        b.put_bytes("runs/r/status.json", b"{}")
        scopes = [re.search(r"Credential=\w+/\d+/([\w-]+)/", h["authorization"]).group(1) for _, _, h in server.seen]
        assert scopes == ["eu-west-3", "ap-south-1"] and b.region == "ap-south-1"
    finally:
        server.stop()


def test_reports_are_retried_through_503_and_say_what_failed_for_good(imds, monkeypatch):
    busy = (503, {}, b"<Error><Code>SlowDown</Code></Error>")
    server = Scripted([busy, busy, (200, {}, b"")])
    try:
        bucket(monkeypatch, server.url).put_bytes("runs/r/heartbeat", b"1")
        assert len(server.seen) == 3
        server.seen.clear()
        monkeypatch.setenv("RK_STORAGE_RETRIES", "2")
        denied = Scripted([(403, {}, b"<Error><Code>AccessDenied</Code></Error>")])
        with pytest.raises(KitError, match=r"denied \(AccessDenied\).*s3:PutObject"):
            bucket(monkeypatch, denied.url).put_bytes("k", b"")
        assert len(denied.seen) == 1  # refused is refused: no retry
        denied.stop()
    finally:
        server.stop()
    down = Scripted([busy])
    try:
        with pytest.raises(StorageError, match=r"cannot write runs/r/status.json at s3://my-bucket/pre/fix: "
                                               r"HTTPStatusError: HTTP 503"):
            bucket(monkeypatch, down.url).put_bytes("runs/r/status.json", b"{}")
        assert len(down.seen) == 3
    finally:
        down.stop()


@pytest.mark.parametrize("store", ["gcs-vm", "s3-vm"], indirect=True)
def test_large_files_go_up_in_parts(store, tmp_path, monkeypatch):
    """In parts sent side by side: S3, a multipart upload (moto enforces 5 MiB parts); GCS,
    objects of their own composed into one (and deleted)."""
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (11 * 4096 + 3))  # 11 MiB and a bit
    if hasattr(store, "chunk"):
        store.chunk, parts = 1 << 20, 12
    else:
        store.single_part_limit = store.part = 5 << 20
        parts = 3
    calls: list[str] = []
    real = http.request
    monkeypatch.setattr(http, "request", lambda m, u, *a, **k: calls.append(f"{m} {u}") or real(m, u, *a, **k))
    store.put_file(src, "runs/r/results/big.bin")
    store.get_file("runs/r/results/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert len([c for c in calls if "partNumber=" in c or ("big.bin.part" in c and c.startswith("POST"))]) == parts, calls
    assert [o.key for o in store.list("runs/r/results/")] == ["runs/r/results/big.bin"]  # no part left behind


def discovery() -> dict:
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "storage.v1.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("side", ["vm", "client"])
def test_gcs_requests_are_the_json_apis_own(gcs_bucket, tmp_path, monkeypatch, side):
    """Every request the GCS code makes — the VM's store, and the client's (the same requests,
    with the user's credentials; its reads of a pull included) — against storage.v1's discovery
    document: a method of `objects` (or `buckets`) with that HTTP method and path, its
    parameters and the API's global ones only."""
    from urllib.parse import parse_qsl, urlsplit

    from conftest import vm_store

    from researchkit_py.clouds.registry import open_store
    from researchkit_py.storage.parallel import pieces

    class Request:  # what vm_store needs of pytest's request
        def __init__(self):
            self.finalizers = []

        def addfinalizer(self, f):
            self.finalizers.append(f)

        def getfixturevalue(self, name):
            return gcs_bucket

    req = Request()
    store = vm_store(req, monkeypatch, "gcs") if side == "vm" else open_store(f"gs://{gcs_bucket}/pre/fix")
    assert store.vm.__class__.__name__ == ("VMBucket" if side == "vm" else "ClientBucket")
    store.chunk = 256 << 10
    seen: list[tuple[str, str]] = []
    real = http.request
    monkeypatch.setattr(http, "request", lambda m, u, *a, **k: seen.append((m, u)) or real(m, u, *a, **k))
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (600 << 10))
    try:
        store.put_bytes("runs/r/status.json", b"{}")
        store.put_file(big, "runs/r/results/a b/big.bin")
        store.vm.put_file(big, "runs/r/logs/run.log")
        store.get_file("runs/r/results/a b/big.bin", tmp_path / "back")
        assert store.get_range("runs/r/results/a b/big.bin", 10, 20) == b"x" * 10
        assert store.list_dirs("runs") == ["r"] and len(store.list("runs/r/")) == 3
        if side == "client":
            assert store.get_tail("runs/r/logs/run.log", (600 << 10) - 3) == b"xxx"
            assert store.get_tail("runs/r/logs/run.log", 600 << 10) == b""  # the server's 416
            fd = os.open(tmp_path / "pieces", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for start, end in pieces(600 << 10, 256 << 10):
                    store.get_range_into("runs/r/results/a b/big.bin", start, end, fd)
            finally:
                os.close(fd)
            assert (tmp_path / "pieces").read_bytes() == big.read_bytes()
            assert store.ensure_bucket("us-central1") is False  # there: one buckets.get, no SDK
        store.delete("runs/r/status.json")
    finally:
        for f in req.finalizers:
            f()
    doc = discovery()
    methods = {f"{r}.{n}": m for r in ("objects", "buckets") for n, m in doc["resources"][r]["methods"].items()}
    root = urlsplit(store.vm.api)
    sessions = 0
    for method, url in seen:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        if "upload_id" in query:  # a resumable upload's session URI, as the server handed it out
            sessions += 1
            continue
        assert (parts.scheme, parts.netloc) == (root.scheme, root.netloc), url
        path = parts.path

        def matches(m: dict, method=method, path=path, query=query) -> bool:
            uploads = {p["path"] for p in m.get("mediaUpload", {}).get("protocols", {}).values()}
            templates = [f"/{doc['servicePath']}{m['path']}", *(u for u in uploads if u.startswith("/upload/"))]
            pattern = "|".join("^" + re.sub(r"\{\w+\}", "[^/]+", t) + "$" for t in templates)
            return m["httpMethod"] == method and bool(re.match(pattern, path)) and \
                set(query) <= set(m["parameters"]) | set(doc["parameters"])

        name = next((n for n, m in methods.items() if matches(m)), None)
        assert name, f"{method} {url}: no storage.v1 objects or buckets method matches"
        if "/o/" in path:  # the object's name is one path segment, its slashes escaped
            assert "/" not in path.split("/o/", 1)[1].removesuffix("/compose"), url
        assert query.get("alt", "media") in doc["parameters"]["alt"]["enum"]
        assert query.get("uploadType", "media") in ("media", "resumable"), url
        if name == "objects.insert":
            assert "uploadType" in query and "name" in query
    assert sessions == 0
    assert len([u for m, u in seen if m == "POST" and ".part" in u]) == 3  # 600 KiB in parts of 256 KiB
    assert len([u for m, u in seen if u.endswith("/compose")]) == 1
    assert side == "vm" or [u for m, u in seen if "/o" not in urlsplit(u).path] == [f"{root.geturl()}/storage/v1/b/"
                                                                                    f"{gcs_bucket}?fields=name"]


def service_account_key(path: Path, token_uri: str) -> Path:
    """A service account key file as the IAM console writes it, its token endpoint ours."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "k1",
                                "private_key": pem, "client_email": "runner@p.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    return path


def test_the_clients_gcs_requests_carry_google_auths_token(tmp_path, monkeypatch):
    """fake-gcs-server answers requests with no token at all, real GCS refuses them (401): a
    client tested only against the emulator could lose its Authorization header unnoticed. Here
    google-auth itself (Application Default Credentials from a key file, whose token endpoint is
    a local server) makes the token our requests must carry; and against an emulator, none is
    asked for or sent, as the SDK's AnonymousCredentials sent none."""
    from researchkit_py.clouds.gce.store import ClientBucket

    token = Scripted([(200, {"Content-Type": "application/json"},
                       b'{"access_token": "ya29.from-google-auth", "expires_in": 3600, "token_type": "Bearer"}')])
    gcs = Scripted([(200, {}, b"one"), (200, {}, b"two"), (401, {}, b'{"error": {"code": 401}}')])
    try:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key(tmp_path / "key.json",
                                                                                       f"{token.url}/token")))
        b = ClientBucket("bkt", "pre", Settings(read_file=False))
        b.api = gcs.url  # STORAGE_API, at a server of ours
        assert (b.get("runs/r/status.json"), b.get("runs/r/heartbeat")) == (b"one", b"two")
        assert [(m, p) for m, p, _ in token.seen] == [("POST", "/token")]  # one token for both requests
        auth = [{k.lower(): v for k, v in h.items()}.get("authorization") for _, _, h in gcs.seen]
        assert auth == ["Bearer ya29.from-google-auth"] * 2
        with pytest.raises(KitError, match=r"access to gs://bkt/pre denied \(HTTP 401\); check the bucket's "
                                           r"permissions for your account"):
            b.get("runs/r/manifest.json")
        refused = Scripted([(400, {"Content-Type": "application/json"},
                             b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}')])
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key(tmp_path / "old.json",
                                                                                       f"{refused.url}/token")))
        with pytest.raises(KitError, match=r"credentials were refused .*gcloud auth application-default login"):
            ClientBucket("bkt", "pre", Settings(read_file=False)).get("k")
        refused.stop()
        gcs.seen.clear()
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        ClientBucket("bkt", "pre", Settings(read_file=False)).call("GET", "storage/v1/b/bkt/o", ok=(401,))
        assert "authorization" not in {k.lower() for k in gcs.seen[0][2]} and len(token.seen) == 1
    finally:
        token.stop()
        gcs.stop()


def test_a_missing_object_in_a_bucket_named_bucket_is_a_missing_object(monkeypatch):
    """GCS's 404 bodies, as it sends them: a missing object names its bucket and key ("No such
    object: ml-bucket/…"), a missing bucket says "The specified bucket does not exist."
    fake-gcs-server answers "Not Found" to both, so only these bodies show that the word
    "bucket" in a name must not make a missing status.json a missing bucket (a pull then said
    the bucket was gone)."""
    from researchkit_py.clouds.gce.store import ClientBucket
    from researchkit_py.errors import NotFound

    gcs = Scripted([(404, {"Content-Type": "text/html; charset=UTF-8"},
                     b"No such object: ml-bucket/runs/r/bucket-stats.json"),
                    (404, {"Content-Type": "application/json"},
                     b'{"error": {"code": 404, "message": "The specified bucket does not exist.", "errors": '
                     b'[{"message": "The specified bucket does not exist.", "domain": "global", "reason": "notFound"}]}}')])
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        b = ClientBucket("ml-bucket", "", Settings(read_file=False))
        with pytest.raises(NotFound, match="no object runs/r/bucket-stats.json in gs://ml-bucket"):
            b.get("runs/r/bucket-stats.json")
        with pytest.raises(KitError, match="bucket gs://ml-bucket does not exist; create it or set RK_BUCKET"):
            b.get("runs/r/status.json")
    finally:
        gcs.stop()


def test_a_signal_wins_over_the_stage_and_a_step_says_why():
    setup = protocol.final_status("SETUP", None, "", "installing requirements.txt: x==1 cannot be installed: …")
    assert (setup["phase"], setup["cause"], setup["step"]) == ("FAILED", "boot_error",
                                                               "installing requirements.txt: x==1 cannot be installed: …")
    assert setup["message"] == "setup failed during SETUP: installing requirements.txt: x==1 cannot be installed: …"
    assert protocol.final_status("SETUP", None, "terminated")["cause"] == "terminated"
    assert protocol.final_status("UPLOAD", 0, "exit")["cause"] == "upload_error"  # the command's result does not
    assert protocol.final_status("UPLOAD", 0, "terminated")["cause"] == "terminated"


def test_a_cloud_vm_reaches_only_its_own_clouds_buckets():
    from researchkit_py.vm_payload import vm_agent

    with pytest.raises(KitError, match=r"GCE VMs cannot use the bucket s3://b/p: .* gs:// buckets only"):
        vm_agent("gce", "s3://b/p")
    with pytest.raises(KitError, match="EC2 VMs cannot use the bucket file:///tmp/b"):
        vm_agent("ec2", "file:///tmp/b")
    assert vm_agent("local", "gs://b/p").store_class.endswith("gce.store:GCSStore")  # this machine: the SDK
    for provider, url in (("gce", "gs://b/p"), ("ec2", "s3://b/p")):
        agent = vm_agent(provider, url)
        assert not [m for m in agent.core if m.endswith(("store.py", "aws.py", "transfer.py", "base.py"))], agent.core


def test_boot_reports_the_image_and_a_failing_step_leaves_its_reason(tmp_path, capsys):
    from researchkit_py.vm_agent import Agent, VMEnv, main

    local = "researchkit_py.clouds.local.store:LocalStore"
    (tmp_path / "vm").mkdir()
    agent = Agent(VMEnv("r1", f"file://{tmp_path / 'b'}", local, local, tmp_path / "vm", "local", {}))
    status = tmp_path / "b" / "runs" / "r1" / "status.json"
    assert main(["boot"], agent) == 0
    boot = json.loads(status.read_text())
    assert boot["phase"] == "BOOT" and set(boot["image"]) == {"os", "python", "arch", "missing"}
    assert main(["status", "SETUP", "--", "get-bundle", "code/nope.tar.gz", str(tmp_path / "w")], agent) == 1
    assert "researchkit: get-bundle failed: no object code/nope.tar.gz" in capsys.readouterr().err
    assert main(["finish", "SETUP", "", "", "downloading the code"], agent) == 0
    final = json.loads(status.read_text())
    assert (final["phase"], final["cause"]) == ("FAILED", "boot_error")
    assert final["step"] == f"downloading the code: no object code/nope.tar.gz in file://{tmp_path / 'b'}"


# --- the agent's commands, as the startup script calls them (a directory bucket) ------------
LOCAL_STORE = "researchkit_py.clouds.local.store:LocalStore"


def _agent(tmp_path, environ=None, bucket_class=LOCAL_STORE):
    from researchkit_py.vm_agent import Agent, VMEnv

    (tmp_path / "vm").mkdir(exist_ok=True)
    return Agent(VMEnv("r1", f"file://{tmp_path / 'b'}", bucket_class, LOCAL_STORE, tmp_path / "vm", "local",
                       environ or {}))


def _run_file(tmp_path, name: str) -> Path:
    return tmp_path / "b" / protocol.run_key("r1", name)


def test_the_agent_reports_status_heartbeat_log_and_final_status(tmp_path):
    import time

    from researchkit_py.vm_agent import main

    agent = _agent(tmp_path)
    (tmp_path / "vm" / "run.log").write_text("line 1\n")
    assert main(["status", "RUN", "--", "heartbeat"], agent) == 0  # one Python start for both
    assert json.loads(_run_file(tmp_path, protocol.STATUS).read_text())["phase"] == "RUN"
    assert abs(float(_run_file(tmp_path, protocol.HEARTBEAT).read_text()) - time.time()) < 60
    assert _run_file(tmp_path, protocol.LOG).read_text() == "line 1\n"
    (tmp_path / "vm" / protocol.GPU_FACTS).write_text('{"model": "T4", "count": 1}')
    (tmp_path / "vm" / "run.log").write_text("line 1\nline 2\n")
    assert main(["finish", "DONE", "3", "exit"], agent) == 0
    final = json.loads(_run_file(tmp_path, protocol.STATUS).read_text())
    assert {k: final[k] for k in ("run_id", "phase", "cause", "exit_code", "stage", "gpu")} == {
        "run_id": "r1", "phase": "FAILED", "cause": "exit", "exit_code": 3, "stage": "DONE",
        "gpu": {"model": "T4", "count": 1}}
    assert _run_file(tmp_path, protocol.LOG).read_text() == "line 1\nline 2\n"  # the last log goes up first
    assert main(["finish", "DONE", "0", ""], agent) == 0
    final = json.loads(_run_file(tmp_path, protocol.STATUS).read_text())
    assert (final["phase"], final["exit_code"]) == ("DONE", 0)
    assert main(["finish", "BOOT", "", ""], agent) == 0
    assert json.loads(_run_file(tmp_path, protocol.STATUS).read_text())["exit_code"] is None


def test_a_run_asked_to_stop_before_its_command_reports_nothing_over_the_clients_final_status(tmp_path):
    """An interrupted launch: the client deleted the instance and wrote CANCELLED, yet its VM may
    boot (a cloud that had not listed it yet). BOOT and SETUP then write nothing and stop the
    chain with CANCEL_RC; the script's trap reports the run CANCELLED. From RUN on, the status
    is written: the heartbeat has already looked for the request."""
    from researchkit_py.vm_agent import CANCEL_RC, main

    agent = _agent(tmp_path)
    assert main(["boot"], agent) == 0
    assert json.loads(_run_file(tmp_path, protocol.STATUS).read_text())["phase"] == "BOOT"
    final = protocol.cancelled_status("r1", "launch interrupted (SIGINT); nothing runs")
    _run_file(tmp_path, protocol.STATUS).write_text(json.dumps(final))
    _run_file(tmp_path, protocol.CANCEL).write_text("{}")
    assert main(["boot"], agent) == CANCEL_RC
    assert main(["status", "SETUP", "--", "get-agent", "code/nope.tar.gz"], agent) == CANCEL_RC
    assert json.loads(_run_file(tmp_path, protocol.STATUS).read_text()) == final
    assert not (tmp_path / "vm" / "reason").exists()  # no step failed
    assert main(["finish", "SETUP", "", ""], agent) == 0
    assert json.loads(_run_file(tmp_path, protocol.STATUS).read_text())["phase"] == "CANCELLED"
    assert main(["status", "UPLOAD"], agent) == 0


def test_a_failing_command_stops_the_chain_and_leaves_its_reason_but_a_heartbeat_does_not(tmp_path, capsys):
    from researchkit_py.vm_agent import main

    agent = _agent(tmp_path)
    assert main(["get-bundle", "code/nope.tar.gz", str(tmp_path / "w"), "--", "status", "RUN"], agent) == 1
    assert not _run_file(tmp_path, protocol.STATUS).exists()  # what came after the failure did not run
    assert (tmp_path / "vm" / "reason").read_text().startswith("no object code/nope.tar.gz")
    assert "Traceback" not in capsys.readouterr().err  # one of ours: its line says it all
    (tmp_path / "vm" / "reason").unlink()
    broken = _agent(tmp_path, bucket_class="researchkit_py.no_such_module:Bucket")
    assert main(["heartbeat"], broken) == 1
    assert not (tmp_path / "vm" / "reason").exists()  # a missed heartbeat is no step's failure
    err = capsys.readouterr().err
    assert "researchkit: heartbeat failed: ModuleNotFoundError: No module named 'researchkit_py.no_such_module'" in err
    assert "Traceback" in err  # not one of ours: the whole story, in the log


@pytest.mark.parametrize(("argv", "said"), [([], "usage: vm_agent boot|status"),
                                            (["fly", "away"], "vm_agent: unknown command fly\n")])
def test_an_unknown_command_is_refused_with_exit_2(tmp_path, capsys, argv, said):
    from researchkit_py.vm_agent import main

    assert main(argv, _agent(tmp_path)) == 2
    assert capsys.readouterr().err.startswith(said)


def test_the_agent_needs_its_whole_environment():
    from researchkit_py.vm_agent import VMEnv

    env = {"RK_RUN_ID": "r1", "RK_STORE": "file:///b", "RK_BUCKET_CLASS": "m:C", "RK_STORE_CLASS": "m:S",
           "RK_ROOT": "/vm", "RK_PROVIDER": "gce", "OTHER": "x"}
    assert VMEnv.from_environ(env) == VMEnv("r1", "file:///b", "m:C", "m:S", Path("/vm"), "gce", env)
    for name in ("RK_STORE", "RK_PROVIDER"):
        with pytest.raises(SystemExit, match=f"^vm_agent: {name} is not set$"):
            VMEnv.from_environ({**env, name: ""})


def test_the_agent_moves_the_code_data_and_results_and_deletes_its_vm(tmp_path):
    import io
    import tarfile

    from researchkit_py.clouds.local.store import LocalStore
    from researchkit_py.vm_agent import main

    record = tmp_path / "rk-r1.json"
    record.write_text("{}")
    agent = _agent(tmp_path, {"RK_LOCAL_INSTANCE": str(record)})
    store = LocalStore.open_url(f"file://{tmp_path / 'b'}", Settings(environ={}, read_file=False))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x=1"))
    store.put_bytes("code/c.tar.gz", raw.getvalue())
    store.put_bytes("code/rest.tar.gz", raw.getvalue())
    store.put_bytes(protocol.run_key("r1", "data/d/in.csv"), b"1,2\n")
    work, results = tmp_path / "w", tmp_path / "w" / "results"
    assert main(["get-agent", "code/rest.tar.gz", "--", "get-bundle", "code/c.tar.gz", str(work),
                 "--", "get-data", str(work)], agent) == 0
    assert (tmp_path / "vm" / "agent" / "train.py").read_bytes() == b"x=1"
    assert (work / "train.py").read_bytes() == b"x=1" and (work / "d" / "in.csv").read_bytes() == b"1,2\n"
    results.mkdir()
    (results / "metrics.json").write_text('{"acc": 1}')
    assert main(["push-results", str(results)], agent) == 0
    manifest = store.read_json(protocol.run_key("r1", protocol.RESULTS_MANIFEST))
    assert manifest["run_id"] == "r1" and [f["path"] for f in manifest["files"]] == ["metrics.json"]
    assert main(["self-delete"], agent) == 0 and not record.exists()


def test_boot_names_the_image_and_what_it_lacks(tmp_path, monkeypatch, capsys):
    """The VM's first status: the image's PRETTY_NAME, and pip or venv when they are missing."""
    import importlib.util

    from researchkit_py.vm_agent import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ensurepip" else real(name, *a))
    assert main(["boot"], _agent(tmp_path)) == 0
    text = _run_file(tmp_path, protocol.STATUS).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # readable in the bucket's console
    image = json.loads(text)["image"]
    release = Path("/etc/os-release")
    if release.is_file():
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', release.read_text(), re.M)
        assert image["os"] == pretty.group(1)
    assert image["missing"] == ["venv"]
    assert capsys.readouterr().out.strip().endswith(f"{image['arch']}; no venv")


def test_the_agent_ignores_a_project_env_file_where_it_runs(tmp_path, monkeypatch):
    """On the VM the settings come from the script's environment only: an env file in the
    working directory (the user's code) is not read."""
    from researchkit_py.vm_agent import main

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / ".orchestration-kit.env").write_text("RK_MAX_HOURS=1\n")  # an error, were it read
    monkeypatch.chdir(tmp_path / "w")
    assert main(["status", "RUN"], _agent(tmp_path, {"EXP_PROJECT_ROOT": str(tmp_path / "w")})) == 0


@pytest.mark.parametrize(("argv", "first"), [(["boot"], "researchkit: image: "), (["finish", "DONE", "0", "exit"], "researchkit: DONE")])
def test_the_agents_own_line_comes_before_its_failure_in_the_vms_log(tmp_path, argv, first):
    """The startup script sends the agent's stdout and stderr to one log: what the agent said
    must come before the failure that followed it, even when the bucket cannot be reached."""
    import os
    import subprocess
    import sys

    (tmp_path / "vm").mkdir()
    env = {**os.environ, "RK_RUN_ID": "r1", "RK_STORE": f"file://{tmp_path / 'b'}", "RK_PROVIDER": "local",
           "RK_BUCKET_CLASS": "researchkit_py.no_such_module:Bucket", "RK_STORE_CLASS": LOCAL_STORE,
           "RK_ROOT": str(tmp_path / "vm")}
    env.pop("PYTHONUNBUFFERED", None)  # as on the VM: stdout to a file is block-buffered
    r = subprocess.run([sys.executable, "-m", "researchkit_py.vm_agent", *argv], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])
    lines = r.stdout.splitlines()
    assert r.returncode == 1 and lines[0].startswith(first), lines
    assert lines[1].startswith(f"researchkit: {argv[0]} failed: ModuleNotFoundError"), lines
