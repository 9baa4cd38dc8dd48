"""Cloud Storage as the VM agent's store, standard library only: the JSON API through the VM's
own authorized requests (vm.py), with resumable uploads, listings and ranged reads. It travels
with the agent's setup and transfer modules, fetched from the bucket (see startup.py); the
client uses the SDK (store.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

from ...errors import NotFound
from ...settings import Settings
from ...storage.base import ObjectInfo, Store, join_key
from .. import http
from .vm import VMBucket

CHUNK = 64 << 20  # larger files go up as a resumable upload, in pieces of this size (a multiple of 256 KiB)
# A composite object counts the objects it was composed of; GCS has capped that count (at 1,024).
# A log appended to this often is uploaded whole once, which starts the count again.
MAX_COMPONENTS = 1000


class GCSRestStore(Store):
    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(settings)
        self.vm = VMBucket(bucket, prefix, settings)
        self.prefix, self.url = self.vm.prefix, self.vm.url
        self.chunk = CHUNK

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.vm.put(key, data)

    def _put_file(self, local: Path, key: str) -> None:
        size = local.stat().st_size
        if size <= self.chunk:
            self.vm.put(key, local)
            return
        session = self.vm.upload(key, "resumable", headers={
            "X-Upload-Content-Type": "application/octet-stream", "X-Upload-Content-Length": str(size),
            "Content-Length": "0"}).headers["location"]
        offset = 0
        with open(local, "rb") as f:
            while offset < size:  # each piece says where it goes; the answer, how much is kept
                n = min(self.chunk, size - offset)
                resp = http.request("PUT", session, {"Content-Length": str(n),
                                                     "Content-Range": f"bytes {offset}-{offset + n - 1}/{size}"},
                                    http.FileSlice(f, offset, n))
                if resp.status == 308:
                    kept = resp.headers.get("range", "")
                    offset = int(kept.rpartition("-")[2]) + 1 if kept else 0
                elif resp.status < 300:
                    return
                else:
                    raise http.HTTPStatusError(resp.status, f"PUT {self.url}/{key}", resp.data)

    def _append_file(self, local: Path, key: str, start: int, end: int) -> None:
        """The new bytes as an object of their own, composed onto the end of the log (on the
        generation that holds `start` bytes, so a repeated request cannot append twice), then
        deleted: the log stays one object and only what is new goes up."""
        try:
            meta = json.loads(self.vm.call("GET", self.vm.objects(key), key=key).data)
        except NotFound:
            meta = {}
        size = int(meta.get("size", -1))
        if size == end:
            return
        with open(local, "rb") as f:
            if size != start or start == 0 or int(meta.get("componentCount", 1)) >= MAX_COMPONENTS:
                self.vm.upload(key, "media", http.FileSlice(f, 0, end), {"Content-Length": str(end)})
                return
            part = key + ".append"
            self.vm.upload(part, "media", http.FileSlice(f, start, end - start), {"Content-Length": str(end - start)})
        body = {"sourceObjects": [{"name": self.vm.name(key)}, {"name": self.vm.name(part)}],
                "destination": {"contentType": meta.get("contentType", "application/octet-stream")}}
        try:
            self.vm.call("POST", self.vm.objects(key) + "/compose", {"ifGenerationMatch": meta["generation"]}, key=key,
                         body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        finally:
            self._delete(part)

    def _get_file(self, key: str, local: Path) -> None:
        self.vm.get(key, local)

    def _get_bytes(self, key: str) -> bytes:
        return self.vm.get(key)

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self.vm.call("GET", self.vm.objects(key), {"alt": "media"}, key=key,
                            headers={"Range": f"bytes={start}-{end - 1}"}).data

    def _pages(self, query: dict) -> Iterator[dict]:
        while True:
            page = json.loads(self.vm.call("GET", self.vm.objects(), query).data or b"{}")
            yield page
            if not page.get("nextPageToken"):
                return
            query = {**query, "pageToken": page["nextPageToken"]}

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = join_key(self.prefix, prefix) + ("/" if prefix.endswith("/") else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in self._pages({"prefix": full} if full else {}):
            for item in page.get("items", []):
                md5 = base64.b64decode(item["md5Hash"]).hex() if item.get("md5Hash") else None
                yield ObjectInfo(item["name"][cut:], int(item.get("size", 0)), md5)

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        full = join_key(self.prefix, prefix) + "/"
        for page in self._pages({"prefix": full, "delimiter": "/"}):
            for p in page.get("prefixes", []):
                yield p[len(full):].rstrip("/")

    def _delete(self, key: str) -> None:
        self.vm.call("DELETE", self.vm.objects(key), key=key, ok=(404,))

    def _is_transient(self, exc: BaseException) -> bool:
        return http.transient(exc)
