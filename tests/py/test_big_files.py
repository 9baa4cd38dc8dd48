"""Big files in pieces, on every backend against its emulator: a pull fetches a file larger than
a piece as ranged reads side by side, each streamed to its place in the file, and verifies the
whole; the VM's stores send such a file up in parts side by side (test_vm_side.py holds the
parts' requests against the clouds' definitions)."""

from __future__ import annotations

import hashlib
import os

import pytest

from researchkit_py.errors import KitError
from researchkit_py.storage import transfer
from researchkit_py.storage.transfer import pull_tree, tree_manifest


def test_a_big_file_comes_down_in_ranged_pieces(store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom((5 << 20) + 3))
    (src / "small.txt").write_bytes(b"small")
    store.put_file(src / "model.bin", "runs/r/results/model.bin")
    store.put_file(src / "small.txt", "runs/r/results/small.txt")
    monkeypatch.setattr(transfer, "PIECE", 1 << 20)
    ranges: list[tuple[int, int]] = []
    real = store.get_range_into
    monkeypatch.setattr(store, "get_range_into", lambda key, start, end, fd: (
        ranges.append((start, end)), real(key, start, end, fd))[1])
    dest = tmp_path / "dest"
    stats = pull_tree(store, "runs/r/results", dest, expected=tree_manifest(src))
    assert (stats.files, stats.bytes) == (2, (5 << 20) + 8)
    assert sorted(ranges) == [(n << 20, min((n + 1) << 20, (5 << 20) + 3)) for n in range(6)]
    assert (dest / "model.bin").read_bytes() == (src / "model.bin").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["model.bin", "small.txt"]  # no staging left


def test_a_big_file_that_does_not_match_its_checksum_is_not_installed(store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"m" * ((2 << 20) + 5))
    store.put_file(src / "model.bin", "runs/r/results/model.bin")
    manifest = tree_manifest(src)
    manifest[0]["sha256"] = hashlib.sha256(b"other").hexdigest()
    monkeypatch.setattr(transfer, "PIECE", 1 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(KitError, match="model.bin: downloaded content does not match its manifest checksum"):
        pull_tree(store, "runs/r/results", dest, expected=manifest)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_a_big_files_checksum_follows_its_pieces_in_order_and_a_failed_piece_stops_it(store, tmp_path, monkeypatch):
    """The pieces land out of order; the digest, read back in order as they land, is the file's
    own. A piece that fails for good ends the pull with nothing installed, and the digest's
    thread does not wait for the pieces that will never come."""
    import threading

    from researchkit_py.storage.digest import InOrderDigest, file_digest
    from researchkit_py.storage.parallel import pieces

    data = os.urandom((3 << 20) + 7)
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        ranges = pieces(len(data), 1 << 20)
        digest = InOrderDigest(fd, ranges, "sha256")
        for n in (3, 1, 0, 2):
            start, end = ranges[n]
            os.pwrite(fd, data[start:end], start)
            digest.written(n)
        assert digest.result() == file_digest(path) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        os.close(fd)

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom((4 << 20) + 1))
    store.put_file(src / "model.bin", "runs/r/results/model.bin")
    monkeypatch.setattr(transfer, "PIECE", 1 << 20)
    real = store.get_range_into

    def flaky(key, start, end, fd):
        if start == 2 << 20:
            raise KitError("the bucket refused piece 2")
        real(key, start, end, fd)

    monkeypatch.setattr(store, "get_range_into", flaky)
    dest = tmp_path / "dest"
    with pytest.raises(KitError, match="refused piece 2"):
        pull_tree(store, "runs/r/results", dest, expected=tree_manifest(src))
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "pull-digest"]  # it ended with the pull
