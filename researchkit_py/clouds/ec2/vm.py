"""The EC2 VM's own pieces, standard library only: the instance profile's credentials from
IMDSv2, Signature Version 4, and the run's bucket as the VM's reports reach it (VMBucket).
The agent's store (rest.py) builds on them, and the client's (store.py) with its own credentials."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse, urlsplit

from ...errors import KitError, NotFound
from ...settings import Settings
from .. import http

IMDS = "http://169.254.169.254/"
UNSIGNED = "UNSIGNED-PAYLOAD"  # for file bodies, sent over TLS (S3 allows it; the results manifest has checksums)


def sign(method: str, url: str, headers: dict[str, str], payload: str, creds: dict, region: str,
         amz_date: str) -> dict[str, str]:
    """`headers` with SigV4's added (host, x-amz-date, x-amz-content-sha256, the session token,
    authorization); every header given is signed. `payload`: the body's sha256, or UNSIGNED."""
    parts = urlsplit(url)
    host = parts.netloc.removesuffix(":443" if parts.scheme == "https" else ":80")
    out = {k.lower(): v for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload})
    if creds.get("Token"):
        out["x-amz-security-token"] = creds["Token"]
    names = sorted(out)
    query = "&".join(f"{k}={v}" for k, v in sorted(p.partition("=")[::2] for p in parts.query.split("&") if p))
    canonical = "\n".join([method, parts.path or "/", query, *(f"{k}:{' '.join(out[k].split())}" for k in names), "",
                           ";".join(names), payload])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + creds["SecretAccessKey"]).encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


class InstanceRole:
    """The instance profile's credentials (fetched again five minutes before they expire) and
    the VM's region, from IMDSv2."""

    def __init__(self, endpoint: str):
        self.base = endpoint.rstrip("/") + "/latest/"
        self.creds: dict = {}
        self.lock = threading.Lock()

    def _get(self, path: str, method: str = "GET", headers: dict | None = None) -> str:
        req = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def _session(self) -> dict[str, str]:
        return {"X-aws-ec2-metadata-token": self._get("api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})}

    def credentials(self) -> dict:
        with self.lock:
            expires = self.creds.get("Expiration")
            if not expires or datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=timezone.utc).timestamp() - time.time() < 300:
                session = self._session()
                role = self._get("meta-data/iam/security-credentials/", headers=session).split()[0]
                self.creds = json.loads(self._get(f"meta-data/iam/security-credentials/{role}", headers=session))
            return self.creds

    def region(self) -> str:
        return self._get("meta-data/placement/region", headers=self._session())


class VMBucket(http.RetriedTransfers):
    """The run's bucket as the VM reaches it: signed requests (call), objects put and got whole,
    and — for the reports (status, heartbeat, log) — put_bytes, put_file and get_file retried
    as every store's requests are (RK_STORAGE_RETRIES, RK_STORAGE_BACKOFF)."""

    DENIED = "the instance profile's role needs s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket"

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint = (settings.get("AWS_ENDPOINT_URL") or "").rstrip("/")
        self.role = InstanceRole(settings.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS)
        self._region = settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or ""
        self.retries, self.backoff = settings.integer("RK_STORAGE_RETRIES"), settings.number("RK_STORAGE_BACKOFF")

    @classmethod
    def open_url(cls, url: str, settings: Settings) -> VMBucket:
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, settings)

    @property
    def region(self) -> str:
        if not self._region:
            self._region = self.role.region()
        return self._region

    def _url(self, key: str, query: list[tuple[str, str]]) -> str:
        path = quote("/".join(p for p in (self.prefix, key) if p), safe="/~") if key else ""
        if self.endpoint:
            base = f"{self.endpoint}/{self.bucket}" + (f"/{path}" if key else "")
        elif "." in self.bucket:  # a dotted name does not fit the certificate of a virtual host
            base = f"https://s3.{self.region}.amazonaws.com/{self.bucket}" + (f"/{path}" if key else "")
        else:
            base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{path}"
        return base + (f"?{urlencode(query, quote_via=quote, safe='~')}" if query else "")

    def call(self, method: str, key: str = "", query: list[tuple[str, str]] | None = None, *, body=b"",
             payload: str = "", headers: dict | None = None, sink=None, ok: tuple[int, ...] = ()) -> http.Response:
        """One signed request (once more in the bucket's own region when S3 names another); an
        error status becomes NotFound, a KitError that says what to fix, or HTTPStatusError."""
        payload = payload or hashlib.sha256(body if isinstance(body, bytes) else b"").hexdigest()
        for _ in range(2):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            url = self._url(key, query or [])
            resp = http.request(method, url, sign(method, url, headers or {}, payload, self.role.credentials(),
                                                  self.region, stamp), body, sink=sink)
            moved = resp.headers.get("x-amz-bucket-region")
            if resp.status not in (301, 307, 400) or not moved or moved == self.region or not http.rewind(body):
                break
            self._region = moved
        if resp.status < 300 or resp.status in ok:
            return resp
        code = error_code(resp.data)
        if code == "NoSuchBucket" or (resp.status == 404 and not key):
            raise KitError(f"bucket {self.url} does not exist; create it or set RK_BUCKET")
        if resp.status == 404:
            raise NotFound(f"no object {key} in {self.url}")
        if resp.status == 403:
            raise KitError(f"access to {self.url} denied ({code or 'HTTP 403'}); {self.DENIED}")
        raise http.HTTPStatusError(resp.status, f"{method} {self.url}/{key}", resp.data)

    def put(self, key: str, data: bytes | Path) -> None:
        """One PUT of bytes, or of a file (up to S3's 5 GB)."""
        if isinstance(data, bytes):
            self.call("PUT", key, body=data, headers={"Content-Type": "application/octet-stream"})
            return
        with open(data, "rb") as f:
            self.call("PUT", key, body=f, payload=UNSIGNED, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(data.stat().st_size)})

    def get(self, key: str, local: Path | None = None) -> bytes:
        """The object's bytes, or (with `local`) the object written there."""
        if local is None:
            return self.call("GET", key).data
        with open(local, "wb") as f:
            self.call("GET", key, sink=f)
        return b""


def error_code(data: bytes) -> str:
    """The Code of S3's <Error> document, or ""."""
    try:
        root = xml(data)
    except ET.ParseError:
        return ""
    return root.findtext("Code", "") if root.tag == "Error" else ""


def xml(data: bytes) -> ET.Element:
    """S3's XML with its namespace taken off the tags."""
    root = ET.fromstring(data)
    for el in root.iter():
        el.tag = el.tag.rpartition("}")[2]
    return root
