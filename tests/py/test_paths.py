"""Local paths from a bucket's keys (storage/paths.py): what may be written where, under what
name, with what mode. The stores' own tests (test_storage.py) cover a pull end to end."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from researchkit_py.storage.paths import SafeRoot, UnsafePath, extract_tar, free_name, safe_join, write_json_atomic


@pytest.mark.parametrize(("key", "why"), [
    ("", "empty or not a plain relative path"),
    ("a\x00b", "empty or not a plain relative path"),
    ("a\\b", "empty or not a plain relative path"),
    (".", "it would write outside"),
    ("/etc/passwd", "it would write outside"),
    ("a/../../b", "it would write outside"),
])
def test_each_kind_of_unsafe_key_is_refused_for_its_own_reason(tmp_path, key, why):
    with pytest.raises(UnsafePath, match=f"^refusing object key {re.escape(repr(key))}: {why}"):
        safe_join(tmp_path, key)


def test_names_and_paths_up_to_the_systems_limits_are_accepted_and_no_longer(tmp_path):
    root = SafeRoot(tmp_path)
    assert root.join("n" * 255) == tmp_path.resolve() / ("n" * 255)
    for key in ("n" * 256, "é" * 128):  # bytes, not characters
        with pytest.raises(UnsafePath, match=r"longer than a file name or path may be here \(255 bytes a name\)"):
            root.join(key)
    free = 4095 - len(str(tmp_path.resolve())) - 1  # bytes left for the key under the root
    key = "/".join(["d" * 200] * (free // 201)) + "/"
    key += "f" * (free - len(key))
    assert len(str(root.join(key)).encode()) == 4095
    with pytest.raises(UnsafePath) as e:
        root.join(key + "f")
    assert str(e.value).startswith(f"refusing object key {key[:40]!r}…: ")


def test_a_kept_local_file_gets_the_first_free_orig_name(tmp_path):
    dest = tmp_path / "metrics.json"
    assert free_name(dest) == tmp_path / "metrics.json.orig"
    (tmp_path / "metrics.json.orig").write_text("1")
    assert free_name(dest) == tmp_path / "metrics.json.orig2"
    (tmp_path / "metrics.json.orig2").write_text("2")
    assert free_name(dest) == tmp_path / "metrics.json.orig3"


@pytest.mark.parametrize(("indent", "text"), [(None, '{"a": [1]}'), (2, '{\n  "a": [\n    1\n  ]\n}\n')])
def test_a_record_is_replaced_whole_and_nothing_else_is_left(tmp_path, indent, text):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "status.json"
    path.write_text("old")
    write_json_atomic(path, {"a": [1]}, indent=indent)
    assert path.read_text() == text and json.loads(text) == {"a": [1]}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def _tar(path: Path, members: list[tuple[str, int, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, mode, data in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_a_bundle_unpacks_its_files_with_their_modes_into_any_folder(tmp_path):
    archive = _tar(tmp_path / "b.tar.gz", [
        ("run.sh", 0o700, b"#!/bin/sh\n"), ("data/x/y.txt", 0o600, b"y"), ("data/x/z.txt", 0o666, b"z"),
        ("odd", 0o001, b""),  # executable by anyone at all is executable
        ("empty/inner/", 0o755, None), ("empty/inner/", 0o755, None)])
    for dest in (tmp_path / "new" / "nested" / "dir", tmp_path / "new" / "nested" / "dir"):  # made, then reused
        assert extract_tar(archive, dest) == 4
        modes = {p.relative_to(dest).as_posix(): p.stat().st_mode & 0o777 for p in dest.rglob("*") if p.is_file()}
        assert modes == {"run.sh": 0o755, "data/x/y.txt": 0o644, "data/x/z.txt": 0o644, "odd": 0o755}
        assert (dest / "data" / "x" / "y.txt").read_bytes() == b"y" and (dest / "empty" / "inner").is_dir()
