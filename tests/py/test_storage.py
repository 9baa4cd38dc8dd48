"""The storage contract on every backend (local directory, fake-gcs-server, moto S3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from researchkit_py.clouds.registry import open_store
from researchkit_py.errors import NotFound, StorageError
from researchkit_py.storage.paths import UnsafePath, safe_join
from researchkit_py.storage.transfer import pull_tree, put_tree, tree_manifest


def make_tree(root: Path, n: int = 30) -> None:
    for i in range(n):
        p = root / f"d{i % 4}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 + i * 37))


def test_objects_round_trip(store, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 5000)
    store.put_file(src, "runs/r1/a.bin")
    store.put_bytes("runs/r1/b.txt", b"hello")
    store.write_json("runs/r2/manifest.json", {"k": [1, 2]})
    assert store.get_bytes("runs/r1/b.txt") == b"hello"
    assert store.read_json("runs/r2/manifest.json") == {"k": [1, 2]}
    out = tmp_path / "out.bin"
    store.get_file("runs/r1/a.bin", out)
    assert out.read_bytes() == src.read_bytes()
    assert [o.key for o in store.list("runs/r1/")] == ["runs/r1/a.bin", "runs/r1/b.txt"]
    assert store.list("runs/r1/")[1].size == 5
    assert store.list_dirs("runs") == ["r1", "r2"]
    assert store.exists("runs/r1/a.bin") and not store.exists("runs/r1/a")
    store.delete("runs/r1/a.bin")
    store.delete("runs/r1/a.bin")  # deleting twice is fine
    assert not store.exists("runs/r1/a.bin")


def test_missing_object_is_not_found(store):
    with pytest.raises(NotFound):
        store.get_bytes("nope")
    assert store.read_json_or_none("nope.json") is None


def test_tree_transfer_is_incremental_and_verified(store, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    first = put_tree(store, src, "runs/r/results")
    assert (first.files, first.skipped) == (30, 0)
    again = put_tree(store, src, "runs/r/results")
    assert (again.files, again.bytes, again.skipped) == (0, 0, 30)

    manifest = tree_manifest(src)
    dest = tmp_path / "dest"
    pulled = pull_tree(store, "runs/r/results", dest, expected=manifest)
    assert pulled.files == 30 and pulled.bytes == sum(e["size"] for e in manifest)
    assert tree_manifest(dest) == manifest
    second = pull_tree(store, "runs/r/results", dest, expected=manifest)
    assert (second.files, second.bytes, second.skipped) == (0, 0, 30)
    # without a manifest, the listing's checksums decide
    third = pull_tree(store, "runs/r/results", dest)
    assert (third.files, third.skipped) == (0, 30)


def test_changed_local_file_is_kept_not_overwritten(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "metrics.json").write_text('{"a": 1}')
    put_tree(store, src, "res")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "metrics.json").write_text("mine")
    stats = pull_tree(store, "res", dest, expected=tree_manifest(src))
    assert stats.kept == ["metrics.json"]
    assert (dest / "metrics.json").read_text() == '{"a": 1}'
    assert (dest / "metrics.json.orig").read_text() == "mine"


def test_corrupted_download_is_refused(store, tmp_path):
    store.put_bytes("res/x.txt", b"actual")
    bad = [{"path": "x.txt", "size": 6, "sha256": "0" * 64}]
    with pytest.raises(Exception, match="does not match its manifest"):
        pull_tree(store, "res", tmp_path / "d", expected=bad)
    assert not (tmp_path / "d" / "x.txt").exists()
    assert not [p for p in (tmp_path / "d").iterdir()]  # no partial file left behind


@pytest.mark.parametrize("key", ["../evil", "a/../../evil", "./../x", "/etc/passwd", "", "a\\..\\b", "nul\x00byte"])
def test_unsafe_keys_are_refused(tmp_path, key):
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, key)


def test_symlinked_directory_cannot_lead_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(UnsafePath):
        safe_join(dest, "link/x.txt")


def test_pull_refuses_escaping_manifest_before_writing(store, tmp_path):
    store.put_bytes("res/ok.txt", b"ok")
    evil = [{"path": "ok.txt", "size": 2, "sha256": "x"}, {"path": "../escape.txt", "size": 2, "sha256": "x"}]
    with pytest.raises(UnsafePath):
        pull_tree(store, "res", tmp_path / "d", expected=evil)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "d" / "ok.txt").exists()


def test_existing_symlink_at_destination_is_replaced_not_followed(tmp_path):
    store = open_store(f"file://{tmp_path / 'bucket'}")
    store.put_bytes("res/f.txt", b"new")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "f.txt").symlink_to(victim)
    pull_tree(store, "res", dest)
    assert victim.read_text() == "precious"
    assert (dest / "f.txt").read_text() == "new" and not (dest / "f.txt").is_symlink()


def test_transient_failures_are_retried(tmp_path, monkeypatch):
    store = open_store(f"file://{tmp_path / 'bucket'}")
    real, calls = store._put_bytes, []

    def flaky(key, data):
        calls.append(key)
        if len(calls) < 3:
            raise ConnectionError("bucket briefly unreachable")
        real(key, data)

    monkeypatch.setattr(store, "_put_bytes", flaky)
    store.put_bytes("k", b"v")
    assert len(calls) == 3 and store.get_bytes("k") == b"v"


def test_unreachable_bucket_gives_one_clear_error(monkeypatch):
    from emulators import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("RK_STORAGE_RETRIES", "2")
    with pytest.raises(StorageError, match=r"cannot read k at s3://nobucket: .*check the bucket name"):
        open_store("s3://nobucket").get_bytes("k")


def test_missing_bucket_names_the_fix(s3_bucket, gcs_bucket):
    from researchkit_py.errors import KitError

    for url in ("s3://does-not-exist-b", "gs://does-not-exist-b"):
        with pytest.raises(KitError, match="does not exist; create it or set RK_BUCKET"):
            open_store(url).list("runs/")


def test_the_s3_client_signs_with_what_botocores_credential_chain_finds(s3_bucket, monkeypatch, tmp_path):
    """The client's S3 store (standard-library requests) reads no key itself: a profile in a
    shared credentials file, no key in the environment, is what botocore's chain finds (as
    `aws s3` would) and what the requests are signed with."""
    from researchkit_py.clouds import http

    (tmp_path / "credentials").write_text("[research]\naws_access_key_id = AKIDPROFILEKEY\n"
                                          "aws_secret_access_key = profile-secret\n")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "research")
    signed, request = [], http.request
    monkeypatch.setattr(http, "request", lambda m, u, h=None, *a, **kw: signed.append(h["authorization"]) or request(m, u, h, *a, **kw))
    store = open_store(f"s3://{s3_bucket}/p")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert signed and all(a.startswith("AWS4-HMAC-SHA256 Credential=AKIDPROFILEKEY/") for a in signed), signed


def test_no_aws_credentials_is_one_line(s3_bucket, monkeypatch, tmp_path):
    from researchkit_py.errors import KitError

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # this machine is no EC2 instance
    with pytest.raises(KitError, match=r"^no AWS credentials found; run `aws configure` or `aws sso login`"):
        open_store(f"s3://{s3_bucket}/p").get_bytes("k")
    monkeypatch.setenv("AWS_PROFILE", "nosuchprofile")
    with pytest.raises(KitError, match=r"^your AWS credentials could not be read \(.*nosuchprofile.*\); run `aws"):
        open_store(f"s3://{s3_bucket}/p").get_bytes("k")
    (tmp_path / "config").write_text("[profile broken]\ncredential_process = /bin/false\n")  # as an expired SSO login fails
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "broken")
    with pytest.raises(KitError, match=r"^your AWS credentials could not be read \(.*\); run `aws"):
        open_store(f"s3://{s3_bucket}/p").get_bytes("k")


@pytest.mark.parametrize("url", ["gs://", "ftp://x/y", ""])
def test_bad_bucket_urls(url):
    from researchkit_py.errors import KitError

    with pytest.raises(KitError):
        open_store(url)


def pull_results(store, manifest, dest):
    packs = [f"runs/r/{p}" for p in manifest["packs"]]
    return pull_tree(store, "runs/r/results", dest, expected=manifest["files"], packs=packs)


def test_results_pull_reads_small_files_from_packs(store, tmp_path, monkeypatch):
    import researchkit_py.storage.transfer as transfer

    monkeypatch.setattr(transfer, "RANGE_SIZE", 4000)  # several ranged reads, not one
    src = tmp_path / "src"
    make_tree(src, n=40)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # over the pack limit: its own object
    manifest, up = transfer.put_results(store, src, "runs/r", tmp_path / "scratch")
    assert up.files == 41 and len(manifest["packs"]) == 1
    assert "pack" not in next(e for e in manifest["files"] if e["path"] == "big.bin")

    dest = tmp_path / "dest"
    stats = pull_results(store, manifest, dest)
    assert tree_manifest(dest) == tree_manifest(src)
    assert stats.files == 41 and 3 <= stats.requests < 20, stats  # 40 small files in a few ranged reads

    # only what changed locally is fetched again, the differing local file kept
    (dest / "d1" / "f5.txt").write_text("mine")
    (dest / "d2" / "f6.txt").unlink()
    again = pull_results(store, manifest, dest)
    assert (again.files, again.skipped, again.kept) == (2, 39, ["d1/f5.txt"])
    assert (dest / "d1" / "f5.txt.orig").read_text() == "mine"
    assert tree_manifest(dest / "d2") == tree_manifest(src / "d2")


def test_damaged_pack_installs_nothing_and_hostile_indexes_fall_back(store, tmp_path):
    from researchkit_py.storage.transfer import put_results

    src = tmp_path / "src"
    make_tree(src, n=6)
    manifest, _ = put_results(store, src, "runs/r", tmp_path / "scratch")
    store.put_bytes("runs/r/packs/0000.pack", b"\0" * 10_000)  # same length or more, wrong bytes
    with pytest.raises(Exception, match="does not match its manifest"):
        pull_results(store, manifest, tmp_path / "d")
    assert not [p for p in (tmp_path / "d").rglob("*") if p.is_file()]

    for i, bad in enumerate(({"pack": 7}, {"pack": "0"}, {"offset": -5}, {"offset": "0"})):
        files = [{**e, **bad} for e in manifest["files"]]  # not a usable pack index: per-object reads
        dest = tmp_path / f"d{i}"
        stats = pull_results(store, {**manifest, "files": files}, dest)
        assert stats.requests == 6 and tree_manifest(dest) == tree_manifest(src)
