from __future__ import annotations

import os
import subprocess
import tarfile
import time

import pytest

from researchkit_py.bundle import make_bundle, project_files, upload_bundle
from researchkit_py.clouds.registry import open_store
from researchkit_py.errors import KitError
from researchkit_py.storage.paths import extract_tar


def test_bundle_holds_tracked_and_untracked_but_not_ignored_or_outputs(project):
    (project / ".gitignore").write_text("secret.env\n")
    (project / "secret.env").write_text("TOKEN=x")
    (project / "src").mkdir()
    (project / "src" / "model.py").write_text("x = 1\n")
    (project / "data").mkdir()
    (project / "data" / "big.csv").write_text("1,2\n")
    (project / ".venv").mkdir()
    (project / ".venv" / "lib.py").write_text("")
    subprocess.run(["git", "add", "train.py"], cwd=project, check=True)
    assert project_files(project) == [".gitignore", "src/model.py", "train.py"]


@pytest.mark.parametrize("failure", ["refused", "missing"])
def test_bundle_falls_back_to_a_walk_when_git_cannot_list(project, fp, failure):
    """git refuses a repository owned by another user ("dubious ownership", exit 128), or is not
    installed: conditions the real binary cannot be put in here, so git is faked for this call."""
    (project / "src").mkdir()
    (project / "src" / "model.py").write_text("x = 1\n")
    (project / "results" / "old.txt").write_text("never shipped\n")
    git_ls = ["git", "-C", str(project), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    if failure == "refused":
        fp.register(git_ls, returncode=128, stderr="fatal: detected dubious ownership in repository")
    else:
        def not_installed(process):
            raise FileNotFoundError(2, "No such file or directory: 'git'")
        fp.register(git_ls, callback=not_installed)
    assert project_files(project) == ["src/model.py", "train.py"]
    assert fp.call_count(git_ls) == 1


def test_bundle_without_git_walks_and_excludes(tmp_path):
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "m.json").write_text("{}")
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").write_text("")
    (tmp_path / "pkg" / "m.py").write_text("m")
    assert project_files(tmp_path) == ["a.py", "pkg/m.py"]


def test_bundle_is_reproducible(project):
    one = make_bundle(project)
    time.sleep(1.1)
    os.utime(project / "train.py")  # a touch does not change the content
    two = make_bundle(project)
    assert one.sha256 == two.sha256 and one.path.read_bytes() == two.path.read_bytes()
    (project / "train.py").write_text("print('changed')\n")
    assert make_bundle(project).sha256 != one.sha256


def test_bundle_uploads_once_and_extracts(project, tmp_path):
    store = open_store(f"file://{tmp_path / 'bucket'}")
    b = make_bundle(project)
    assert upload_bundle(store, b) == b.path.stat().st_size > 0
    assert upload_bundle(store, b) == 0  # same content: nothing sent
    out = tmp_path / "out"
    assert extract_tar(b.path, out) == 1
    assert (out / "train.py").read_text() == "print('training')\n"


def test_extract_refuses_escaping_members(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        (tmp_path / "x").write_text("x")
        tar.add(tmp_path / "x", arcname="../escaped")
    with pytest.raises(KitError, match="outside"):
        extract_tar(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()


def test_too_large_bundle_names_the_biggest_files(project):
    (project / "weights.bin").write_bytes(b"\0" * 300_000)
    with pytest.raises(KitError, match=r"limit 0.1 MB.*weights.bin.*--data-dirs"):
        make_bundle(project, max_mb=0.1)
