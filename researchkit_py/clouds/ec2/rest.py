"""Amazon S3 as the VM agent's store, standard library only: the REST API through the VM's
own signed requests (vm.py), with multipart uploads, listings and ranged reads. It travels
with the agent's setup and transfer modules, fetched from the bucket (see startup.py); the
client uses them too, with the user's credentials (store.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from ...errors import NotFound
from ...settings import Settings
from ...storage.base import ObjectInfo, Store, join_key
from ...storage.parallel import pieces, run_parallel
from .. import http
from .vm import UNSIGNED, VMBucket, error_code, xml

SINGLE_PART_LIMIT = 256 << 20  # up to this, one PUT (its ETag is its MD5); beyond, a multipart upload
PART = 64 << 20
MIN_PART = 5 << 20  # S3's smallest part but the last: a log shorter than this cannot be a part, so goes up whole


class S3RestStore(Store):
    log_chunk_limit = MIN_PART
    bucket_class = VMBucket  # whose credentials sign the requests

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(settings)
        self.vm = self.bucket_class(bucket, prefix, settings)
        self.bucket, self.prefix, self.url = bucket, self.vm.prefix, self.vm.url
        self.single_part_limit, self.part = SINGLE_PART_LIMIT, PART

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.vm.put(key, data)

    def _put_file(self, local: Path, key: str) -> None:
        size = local.stat().st_size
        if size <= self.single_part_limit:
            self.vm.put(key, local)
            return
        call = self.vm.call
        upload = xml(call("POST", key, [("uploads", "")]).data).findtext("UploadId", "")
        ranges = pieces(size, max(self.part, -(-size // 10_000)))
        etags = [""] * len(ranges)

        def send(n: int, start: int, end: int):
            def go() -> None:
                with open(local, "rb") as f:
                    resp = call("PUT", key, [("partNumber", str(n + 1)), ("uploadId", upload)], payload=UNSIGNED,
                                body=http.FileSlice(f, start, end - start), headers={"Content-Length": str(end - start)})
                etags[n] = resp.headers["etag"]
            return go

        try:  # the parts side by side
            run_parallel([send(n, *r) for n, r in enumerate(ranges)], self.threads)
            self._complete(key, upload, etags)
        except BaseException:
            call("DELETE", key, [("uploadId", upload)], ok=(404,))
            raise

    def _append_file(self, local: Path, key: str, start: int, end: int) -> None:
        """S3 cannot append: a multipart upload whose first part is a server-side copy of the log
        (UploadPartCopy, if it is still the object of `start` bytes) and whose second is the new
        bytes. Under MIN_PART the log goes up whole (at most 5 MiB a time)."""
        try:
            head = self.vm.call("HEAD", key).headers
        except NotFound:
            head = {}
        size = int(head.get("content-length", -1))
        if size == end:
            return
        call = self.vm.call
        with open(local, "rb") as f:
            if size != start or start < MIN_PART:
                call("PUT", key, body=http.FileSlice(f, 0, end), payload=UNSIGNED,
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(end)})
                return
            upload = xml(call("POST", key, [("uploads", "")]).data).findtext("UploadId", "")
            try:
                source = quote(f"/{self.bucket}/{join_key(self.prefix, key)}", safe="/~")
                copied = xml(call("PUT", key, [("partNumber", "1"), ("uploadId", upload)], headers={
                    "x-amz-copy-source": source, "x-amz-copy-source-if-match": head["etag"]}).data)
                new = call("PUT", key, [("partNumber", "2"), ("uploadId", upload)], payload=UNSIGNED,
                           body=http.FileSlice(f, start, end - start), headers={"Content-Length": str(end - start)})
                self._complete(key, upload, [copied.findtext("ETag", ""), new.headers["etag"]])
            except BaseException:
                call("DELETE", key, [("uploadId", upload)], ok=(404,))
                raise

    def _complete(self, key: str, upload: str, etags: list[str]) -> None:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
        resp = self.vm.call("POST", key, [("uploadId", upload)],
                            body=f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode())
        if error_code(resp.data):  # S3 may answer 200 and fail in the body
            raise http.HTTPStatusError(500, f"POST {self.url}/{key}", resp.data)

    def _get_file(self, key: str, local: Path) -> None:
        self.vm.get(key, local)

    def _get_bytes(self, key: str) -> bytes:
        return self.vm.get(key)

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        return self.vm.call("GET", key, headers={"Range": f"bytes={start}-{end - 1}"}).data

    def _get_range_into(self, key: str, start: int, end: int, sink) -> None:
        self.vm.call("GET", key, headers={"Range": f"bytes={start}-{end - 1}"}, sink=sink)

    def _get_tail(self, key: str, start: int) -> bytes:
        resp = self.vm.call("GET", key, headers={"Range": f"bytes={start}-"}, ok=(416,))
        return b"" if resp.status == 416 else resp.data  # 416: nothing from `start` on

    def _pages(self, query: list[tuple[str, str]]) -> Iterator:
        while True:
            page = xml(self.vm.call("GET", "", [("list-type", "2"), *query]).data)
            yield page
            token = page.findtext("NextContinuationToken")
            if page.findtext("IsTruncated") != "true" or not token:
                return
            query = [*(q for q in query if q[0] != "continuation-token"), ("continuation-token", token)]

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = join_key(self.prefix, prefix) + ("/" if prefix.endswith("/") else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in self._pages([("prefix", full)]):
            for c in page.iter("Contents"):
                etag = (c.findtext("ETag") or "").strip('"')
                yield ObjectInfo(c.findtext("Key", "")[cut:], int(c.findtext("Size", "0")),
                                 etag if etag and "-" not in etag else None)

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        full = join_key(self.prefix, prefix) + "/"
        for page in self._pages([("prefix", full), ("delimiter", "/")]):
            for p in page.iter("CommonPrefixes"):
                yield p.findtext("Prefix", "")[len(full):].rstrip("/")

    def _delete(self, key: str) -> None:
        self.vm.call("DELETE", key, ok=(404,))

    def _is_transient(self, exc: BaseException) -> bool:
        return http.transient(exc)
