"""The embedded provider's requirements.txt environments (vm_setup.reuse_env): built once for
what they were built from, reused after, shared safely by runs that start together, never
reused half-built. Packages come from a wheel made here (UV_FIND_LINKS, no index)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from researchkit_py import vm_setup

REPO = Path(__file__).resolve().parents[2]
CHECK = "rk-tiny && python -c 'import rk_tiny; print(rk_tiny.VERSION)'"


def tiny_wheel(dest: Path, version: str = "1.0") -> Path:
    """A wheel of `rk-tiny` with a console script, as pip and uv install it (RECORD hashes and all)."""
    dist = f"rk_tiny-{version}"
    files = {"rk_tiny/__init__.py": f"VERSION = {version!r}\n\ndef main():\n    print('tiny says hi')\n",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: rk-tiny\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}.dist-info/entry_points.txt": "[console_scripts]\nrk-tiny = rk_tiny:main\n"}
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(v.encode())}\n" for k, v in files.items())
    files[f"{dist}.dist-info/RECORD"] = record + f"{dist}.dist-info/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def wheels(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "wheels"
    tiny_wheel(d, "1.0")
    tiny_wheel(d, "2.0")
    monkeypatch.setenv("UV_FIND_LINKS", str(d))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    return d


def cloud_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "cloud-run"), "--backend", "local", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def run_log(tmp_path: Path, command: str) -> str:
    (tmp_path / "out").mkdir(exist_ok=True)
    out = tmp_path / "out" / str(len(list((tmp_path / "out").iterdir())))
    r = cloud_run("run", command, "--quiet", "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    return (out / ".cloud-run.log").read_text()


def envs_in(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "uv-cache")


def envs(tmp_path: Path) -> list[str]:
    d = tmp_path / "cache" / "envs"
    return envs_in(d) if d.is_dir() else []


def test_a_relaunch_with_unchanged_requirements_reuses_the_environment(project, tmp_path, wheels):
    (project / "requirements.txt").write_text("rk-tiny==1.0\n")
    first = run_log(tmp_path, CHECK)
    assert "tiny says hi\n1.0\n" in first and "kept in" in first
    assert "fetched uv" not in first  # this machine's: the agent runs on the client's Python, site and all
    second = run_log(tmp_path, CHECK)
    assert "tiny says hi\n1.0\n" in second and "unchanged: environment" in second and "installed" not in second
    assert len(envs(tmp_path)) == 1
    (project / "requirements.txt").write_text("rk-tiny==2.0\n")
    third = run_log(tmp_path, CHECK)
    assert "2.0\n" in third and "kept in" in third and len(envs(tmp_path)) == 2


def test_env_cache_off_builds_every_run(project, tmp_path, wheels, monkeypatch):
    monkeypatch.setenv("RK_ENV_CACHE", "off")
    (project / "requirements.txt").write_text("rk-tiny==1.0\n")
    for _ in range(2):
        log = run_log(tmp_path, CHECK)
        assert "requirements.txt installed" in log and "reused" not in log
    assert envs(tmp_path) == []


def test_requirements_naming_local_files_are_not_reused(tmp_path):
    req = tmp_path / "requirements.txt"
    for text, local in [("numpy==2.0\nscikit-learn>=1.3  # the model\n", False), ("-e .\n", True),
                        ("./pkg\n", True), ("-r base.txt\n", True), ("--find-links wheels\nx\n", True),
                        ("file:///tmp/x.whl\n", True), ("# -e . commented out\nx\n", False)]:
        req.write_text(text)
        assert vm_setup._local_refs(req) is local, text


def test_the_key_follows_what_the_environment_is_built_from(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("a==1\n")
    key = vm_setup.env_key(req, {})
    assert vm_setup.env_key(req, {"UV_CACHE_DIR": "/elsewhere", "HOME": "/h"}) == key
    assert vm_setup.env_key(req, {"UV_INDEX_URL": "http://mirror/simple"}) != key
    req.write_text("a==2\n")
    assert vm_setup.env_key(req, {}) != key


def build_in_process(tmp_path: Path, n: int, cache: Path, environ: dict) -> list[str]:
    """n runs' setups at once, in threads (each lock is its own open file, as in separate processes)."""
    req = tmp_path / "requirements.txt"
    req.write_text("rk-tiny==1.0\n")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            vm_setup.install_requirements(req, tmp_path / f"vm{i}" / "venv", tmp_path / f"vm{i}", environ)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for i in range(n):
        (tmp_path / f"vm{i}").mkdir()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return [subprocess.run([tmp_path / f"vm{i}" / "venv" / "bin" / "rk-tiny"], capture_output=True, text=True).stdout
            for i in range(n)]


def test_runs_starting_together_build_one_environment(tmp_path, wheels, capfd):
    cache = tmp_path / "envs"
    environ = {**os.environ, "RK_ENV_CACHE": str(cache)}
    assert build_in_process(tmp_path, 4, cache, environ) == ["tiny says hi\n"] * 4
    out = capfd.readouterr().out
    assert out.count("requirements.txt installed") == 1 and out.count("unchanged: environment") == 3
    assert envs_in(cache) == [vm_setup.env_key(tmp_path / "requirements.txt", environ)]
    assert {(tmp_path / f"vm{i}" / "venv").resolve() for i in range(4)} == {(cache / key).resolve() for key in
                                                                            envs_in(cache)}


def test_a_half_built_environment_is_never_used(tmp_path, wheels, capfd):
    cache = tmp_path / "envs"
    environ = {**os.environ, "RK_ENV_CACHE": str(cache)}
    req = tmp_path / "requirements.txt"
    req.write_text("rk-tiny==1.0\n")
    broken = cache / vm_setup.env_key(req, environ)
    (broken / "bin").mkdir(parents=True)  # a build that died after the rename's target appeared, or a hand-made mess
    (broken / "bin" / "rk-tiny").write_text("#!/bin/sh\necho broken\n")
    (cache / f".build-{broken.name}-x" / "env").mkdir(parents=True)  # and one that died half-way
    assert build_in_process(tmp_path, 1, cache, environ) == ["tiny says hi\n"]
    assert "requirements.txt installed" in capfd.readouterr().out
    assert (broken / vm_setup.BUILT).is_file()


def test_a_failed_build_leaves_nothing_to_reuse(tmp_path, wheels):
    cache = tmp_path / "envs"
    environ = {**os.environ, "RK_ENV_CACHE": str(cache)}
    req = tmp_path / "requirements.txt"
    req.write_text("rk-tiny==9.9\n")
    (tmp_path / "vm").mkdir()
    with pytest.raises(vm_setup.SetupError, match="rk-tiny==9.9 cannot be installed"):
        vm_setup.install_requirements(req, tmp_path / "vm" / "venv", tmp_path / "vm", environ)
    assert envs_in(cache) == [] and not [p for p in cache.iterdir() if p.name.startswith(".build-")]


def test_the_kept_environments_are_where_the_docs_say(project, tmp_path):
    from researchkit_py.clouds.local.provider import LocalProvider
    from researchkit_py.settings import Settings

    assert LocalProvider(Settings(project)).env_cache() == str(tmp_path / "cache" / "envs")
    assert "$RK_CACHE_HOME/envs" in (REPO / "docs" / "settings.md").read_text()
