"""The GCE VM's own pieces, standard library only: the metadata server, its service account's
token, the run's bucket as the VM's reports reach it (VMBucket: the Cloud Storage JSON API;
STORAGE_EMULATOR_HOST points it at an emulator), and self-delete through the Compute API (no
gcloud on the image needed). The agent's store (rest.py) builds on VMBucket; the client uses
the SDK (store.py)."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse

from ...errors import KitError, NotFound
from ...settings import Settings
from .. import http

METADATA = "http://metadata.google.internal/computeMetadata/v1"
COMPUTE_API = "https://compute.googleapis.com/compute/v1"
STORAGE_API = "https://storage.googleapis.com"


def metadata(path: str, env: dict[str, str]) -> str:
    base = env.get("RK_METADATA_URL") or METADATA
    req = urllib.request.Request(f"{base}/{path}", headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def access_token(env: dict[str, str]) -> tuple[str, float]:
    """The service account's access token, and when to fetch a new one (a minute before it expires)."""
    reply = json.loads(metadata("instance/service-accounts/default/token", env))
    return reply["access_token"], time.time() + int(reply.get("expires_in", 300)) - 60


class VMBucket(http.RetriedTransfers):
    """The run's bucket as the VM reaches it: authorized JSON API requests (call), objects put
    and got whole, and — for the reports (status, heartbeat, log) — put_bytes, put_file and
    get_file retried as every store's requests are (RK_STORAGE_RETRIES, RK_STORAGE_BACKOFF)."""

    DENIED = "the VM's service account needs the devstorage.read_write scope and write access to the bucket"

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"gs://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.api = (settings.get("STORAGE_EMULATOR_HOST") or STORAGE_API).rstrip("/")
        self.env = settings.environ
        self.retries, self.backoff = settings.integer("RK_STORAGE_RETRIES"), settings.number("RK_STORAGE_BACKOFF")
        self._token: tuple[dict[str, str], float] = ({}, 0.0)
        self._lock = threading.Lock()

    @classmethod
    def open_url(cls, url: str, settings: Settings) -> VMBucket:
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, settings)

    def name(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key) if p)

    def objects(self, key: str = "") -> str:
        """The JSON API path of the bucket's objects, or of one."""
        return f"storage/v1/b/{quote(self.bucket, safe='')}/o" + (f"/{quote(self.name(key), safe='')}" if key else "")

    def call(self, method: str, path: str, query: dict | None = None, *, key: str = "", body=b"",
             headers: dict | None = None, sink=None, ok: tuple[int, ...] = ()) -> http.Response:
        """One request with the service account's token; an error status becomes NotFound, a
        KitError that says what to fix, or HTTPStatusError."""
        with self._lock:
            if time.time() >= self._token[1]:
                self._token = self._authorization()
        url = f"{self.api}/{path}" + (f"?{urlencode(query, quote_via=quote)}" if query else "")
        resp = http.request(method, url, {**self._token[0], **(headers or {})}, body, sink=sink)
        if resp.status < 300 or resp.status in ok:
            return resp
        # GCS: "The specified bucket does not exist." / "No such object: <bucket>/<key>" (whose
        # names may well hold the word "bucket"); fake-gcs-server says "Not Found" to both
        if resp.status == 404 and (not key or b"bucket does not exist" in resp.data.lower()):
            raise KitError(f"bucket {self.url} does not exist; create it or set RK_BUCKET")
        if resp.status == 404:
            raise NotFound(f"no object {key} in {self.url}")
        if resp.status in (401, 403):
            raise KitError(f"access to {self.url} denied (HTTP {resp.status}); {self.DENIED}")
        raise http.HTTPStatusError(resp.status, f"{method} {self.url}/{key}", resp.data)

    def _authorization(self) -> tuple[dict[str, str], float]:
        """The headers that authorize a request, and when to fetch them anew."""
        token, refresh_at = access_token(self.env)
        return {"Authorization": f"Bearer {token}"}, refresh_at

    def upload(self, key: str, kind: str, body=b"", headers: dict | None = None) -> http.Response:
        """POST to the upload path: uploadType `media` (the object in one request) or `resumable`."""
        return self.call("POST", f"upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
                         {"uploadType": kind, "name": self.name(key)}, key=key, body=body,
                         headers={"Content-Type": "application/octet-stream", **(headers or {})})

    def put(self, key: str, data: bytes | Path) -> None:
        """One request: bytes, or a file."""
        if isinstance(data, bytes):
            self.upload(key, "media", data)
            return
        with open(data, "rb") as f:
            self.upload(key, "media", f, {"Content-Length": str(data.stat().st_size)})

    def get(self, key: str, local: Path | None = None) -> bytes:
        """The object's bytes, or (with `local`) the object written there."""
        if local is None:
            return self.call("GET", self.objects(key), {"alt": "media"}, key=key).data
        with open(local, "wb") as f:
            self.call("GET", self.objects(key), {"alt": "media"}, key=key, sink=f)
        return b""


def self_delete(env: dict[str, str]) -> None:
    name = metadata("instance/name", env)
    zone = metadata("instance/zone", env).rsplit("/", 1)[-1]
    project = metadata("project/project-id", env)
    token, _ = access_token(env)
    url = f"{env.get('RK_COMPUTE_API') or COMPUTE_API}/projects/{project}/zones/{zone}/instances/{name}"
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                print(f"researchkit: deleting instance {name} ({r.status})", flush=True)
                return
        except Exception as e:  # noqa: BLE001 - keep trying: a running VM costs money
            print(f"researchkit: self-delete attempt {attempt + 1} failed: {e}", file=sys.stderr, flush=True)
            time.sleep(2 ** attempt)
    raise SystemExit("researchkit: self-delete failed; the deadline (maxRunDuration) will delete the VM")
