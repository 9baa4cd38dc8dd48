"""Cloud Storage as a store, standard library only: the JSON API through authorized requests
(the VM's: vm.py; the client's, with google-auth's token: store.py), with uploads in parts,
listings and ranged reads. It travels with the agent's setup and transfer modules, fetched
from the bucket (see startup.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

from ...errors import NotFound
from ...settings import Settings
from ...storage.base import ObjectInfo, Store, join_key
from ...storage.parallel import pieces, run_parallel
from .. import http
from .vm import VMBucket

CHUNK = 64 << 20  # larger files go up in parts of at least this size, side by side
# A composite object counts the objects it was composed of; GCS has capped that count (at 1,024).
# A log appended to this often is uploaded whole once, which starts the count again.
MAX_COMPONENTS = 1000


class GCSRestStore(Store):
    bucket_class = VMBucket  # whose credentials authorize the requests

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(settings)
        self.vm = self.bucket_class(bucket, prefix, settings)
        self.prefix, self.url = self.vm.prefix, self.vm.url
        self.chunk = CHUNK

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.vm.put(key, data)

    def _put_file(self, local: Path, key: str) -> None:
        """A larger file goes up in parts side by side, each an object of its own, composed into
        the one object (GCS composes up to 32), then deleted."""
        size = local.stat().st_size
        if size <= self.chunk:
            self.vm.put(key, local)
            return
        ranges = pieces(size, max(self.chunk, -(-size // 32)))
        names = [f"{key}.part{n}" for n in range(len(ranges))]

        def send(name: str, start: int, end: int):
            def go() -> None:
                with open(local, "rb") as f:
                    self.vm.upload(name, "media", http.FileSlice(f, start, end - start),
                                   {"Content-Length": str(end - start)})
            return go

        try:
            run_parallel([send(n, *r) for n, r in zip(names, ranges, strict=True)], self.threads)
            self._compose(key, names, {})
        finally:
            run_parallel([lambda n=n: self._delete(n) for n in names], self.threads)

    def _compose(self, key: str, sources: list[str], query: dict, content_type: str = "application/octet-stream") -> None:
        body = {"sourceObjects": [{"name": self.vm.name(s)} for s in sources], "destination": {"contentType": content_type}}
        self.vm.call("POST", self.vm.objects(key) + "/compose", query, key=key, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})

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
        try:
            self._compose(key, [key, part], {"ifGenerationMatch": meta["generation"]},
                          meta.get("contentType", "application/octet-stream"))
        finally:
            self._delete(part)

    def _get_file(self, key: str, local: Path) -> None:
        self.vm.get(key, local)

    def _get_bytes(self, key: str) -> bytes:
        return self.vm.get(key)

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self.vm.call("GET", self.vm.objects(key), {"alt": "media"}, key=key,
                            headers={"Range": f"bytes={start}-{end - 1}"}).data

    def _get_range_into(self, key: str, start: int, end: int, sink) -> None:
        self.vm.call("GET", self.vm.objects(key), {"alt": "media"}, key=key,
                     headers={"Range": f"bytes={start}-{end - 1}"}, sink=sink)

    def _get_tail(self, key: str, start: int) -> bytes:
        resp = self.vm.call("GET", self.vm.objects(key), {"alt": "media"}, key=key,
                            headers={"Range": f"bytes={start}-"}, ok=(416,))
        if resp.status == 416:  # nothing from `start` on
            return b""
        return resp.data if resp.status == 206 else resp.data[start:]  # 200: the server sent it all

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
