"""A user reads a run's bucket with the clouds' own CLIs, not only with this kit: `gcloud storage`
and `aws s3` (the real ones, against the emulators) must read what the VM wrote the way it wrote
it — a log that grew by composition, a big file that went up in parts and was composed or
completed server-side — byte for byte, with no part left over beside it.

The emulators are where these objects could differ from real ones (a composite object has no
MD5 on GCS; a multipart upload's ETag is not an MD5 on S3): the CLIs check what they download
against those, so a difference shows here as a failed download."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LOG = "runs/r1/logs/run.log"
BIG = "runs/r1/results/model.bin"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed: these tests read the bucket with the cloud's own CLI")
    return path


def grow(path: Path, n: int, tag: str) -> int:
    with open(path, "a") as f:
        f.write(f"{tag} {'x' * 90}\n" * (n // 93))
    return path.stat().st_size


def write_like_a_vm(store, tmp_path: Path) -> tuple[bytes, bytes]:
    """A log appended at three heartbeats and a file big enough to go up in parts."""
    log = tmp_path / "run.log"
    log.write_bytes(b"")
    sent = 0
    for n, tag in ((300_000, "a"), (6 << 20, "b"), (40_000, "c")):
        size = grow(log, n, tag)
        store.append_file(log, LOG, sent, size)
        sent = size
    big = tmp_path / "model.bin"
    big.write_bytes(os.urandom((11 << 20) + 7))
    store.put_file(big, BIG)
    return log.read_bytes(), big.read_bytes()


@pytest.mark.parametrize("store", ["gcs-vm"], indirect=True)
def test_gcloud_storage_reads_the_composed_log_and_the_file_composed_of_parts(store, gcs_server, tmp_path):
    gcloud = need("gcloud")
    store.chunk = 4 << 20  # parts of 4 MiB: the 11 MiB file is composed of three
    log, big = write_like_a_vm(store, tmp_path)
    env = {**os.environ, "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{gcs_server.url}/storage/v1/",
           "CLOUDSDK_AUTH_ACCESS_TOKEN": "unused-by-the-emulator", "CLOUDSDK_CORE_PROJECT": "test",
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    root = store.url.rstrip("/")

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([gcloud, "storage", *args], capture_output=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        return r

    assert run("cat", f"{root}/{LOG}").stdout == log
    run("cp", f"{root}/{BIG}", str(tmp_path / "down.bin"))  # gcloud checks the crc32c it is given
    assert (tmp_path / "down.bin").read_bytes() == big
    listed = run("ls", "--recursive", f"{root}/runs/r1/**").stdout.decode().split()
    assert sorted(listed) == sorted([f"{root}/{BIG}", f"{root}/{LOG}"])  # no part left beside them


@pytest.mark.parametrize("store", ["s3-vm"], indirect=True)
def test_aws_s3_reads_the_log_and_the_file_completed_from_parts(store, tmp_path):
    aws = need("aws")
    store.single_part_limit, store.part = 6 << 20, 5 << 20  # the 11 MiB file: a multipart upload of three
    log, big = write_like_a_vm(store, tmp_path)
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION", "us-east-1")}
    root = store.url.rstrip("/")

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([aws, "s3", *args], capture_output=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        return r

    assert run("cp", f"{root}/{LOG}", "-").stdout == log
    run("cp", f"{root}/{BIG}", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == big
    listed = [line.split()[-1] for line in run("ls", "--recursive", f"{root}/runs/r1/").stdout.decode().splitlines()]
    prefix = root.split("/", 3)[3]
    assert sorted(listed) == sorted([f"{prefix}/{BIG}", f"{prefix}/{LOG}"])
