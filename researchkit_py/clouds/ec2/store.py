"""Amazon S3 backend (boto3, imported on first use). AWS_ENDPOINT_URL points it at moto in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import KitError, NotFound
from ...settings import Settings
from ...storage.base import ObjectInfo, Store, join_key
from .aws import aws_client, error_code, no_credentials_is_kit_error

# Objects up to this size go up in one PUT, so their ETag is their MD5 and incremental
# transfers can compare checksums without downloading.
SINGLE_PART_LIMIT = 256 * 1024 * 1024


def s3_client(settings: Settings | None = None, pool_size: int = 32):
    return aws_client("s3", settings, pool_size)


class S3Store(Store):
    # S3's smallest part but the last, below which the VM's store (rest.py) writes a log in
    # chunks; not imported from there: the embedded provider's VMs carry this module alone
    log_chunk_limit = 5 << 20

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        super().__init__(settings)
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.settings)
        return self._client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=SINGLE_PART_LIMIT, use_threads=False)

    def _put_file(self, local: Path, key: str) -> None:
        with _translate(key, self.url):
            self.client.upload_file(str(local), self.bucket, self._key(key), Config=self._transfer_config())

    def _get_file(self, key: str, local: Path) -> None:
        # One GET streamed to disk: download_file would first HEAD every object for its size.
        with _translate(key, self.url):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            with open(local, "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)

    def _put_bytes(self, key: str, data: bytes) -> None:
        with _translate(key, self.url):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _get_bytes(self, key: str) -> bytes:
        with _translate(key, self.url):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        with _translate(key, self.url):
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}")
            return resp["Body"].read()

    def _get_range_into(self, key: str, start: int, end: int, sink) -> None:
        with _translate(key, self.url):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}")["Body"]
            for chunk in body.iter_chunks(1 << 20):
                sink.write(chunk)

    def _get_tail(self, key: str, start: int) -> bytes:
        from botocore import exceptions

        with _translate(key, self.url):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-")
            except exceptions.ClientError as e:
                if error_code(e) == "InvalidRange":  # nothing from `start` on
                    return b""
                raise
            return resp["Body"].read()

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = join_key(self.prefix, prefix) + ("/" if prefix.endswith("/") else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        with _translate(prefix, self.url, bucket=True):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "").strip('"')
                    md5 = etag if etag and "-" not in etag else None
                    yield ObjectInfo(obj["Key"][cut:], int(obj["Size"]), md5)

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        full = join_key(self.prefix, prefix) + "/"
        with _translate(prefix, self.url, bucket=True):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
            for page in pages:
                for p in page.get("CommonPrefixes", []):
                    yield p["Prefix"][len(full):].rstrip("/")

    def _delete(self, key: str) -> None:
        with _translate(key, self.url):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _is_transient(self, exc: BaseException) -> bool:
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions

        if isinstance(exc, S3UploadFailedError):  # upload_file wraps what the service said
            cause = exc.__cause__ or exc.__context__
            return cause is None or self._is_transient(cause)

        if isinstance(exc, (exceptions.EndpointConnectionError, exceptions.ConnectionClosedError,
                            exceptions.ReadTimeoutError, exceptions.IncompleteReadError,
                            exceptions.ResponseStreamingError, ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, exceptions.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status == 429 or status >= 500
        return False


@contextmanager
def _translate(key: str, url: str, bucket: bool = False) -> Iterator[None]:
    from botocore import exceptions

    with no_credentials_is_kit_error():
        try:
            yield
        except exceptions.ClientError as e:
            code = error_code(e)
            if code == "NoSuchBucket":
                raise KitError(f"bucket {url} does not exist; create it or set RK_BUCKET") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no object {key} in {url}") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise KitError(f"access to {url} denied ({code}); check your AWS credentials and the bucket policy") from None
            raise
