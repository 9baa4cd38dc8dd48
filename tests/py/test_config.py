from __future__ import annotations

import pytest

from researchkit_py.errors import KitError
from researchkit_py.settings import Settings, parse_env_file


def test_env_file_parsing(tmp_path):
    f = tmp_path / ".orchestration-kit.env"
    f.write_text('# comment\n\nCOMPUTE_TARGET="${COMPUTE_TARGET:-local}"\nexport RK_BUCKET=\'s3://b/p\'\n'
                 "MAX_GPU_HOURS=2  # two hours\nEMPTY=\nSPACED = no\n".replace("SPACED = no\n", ""))
    assert parse_env_file(f) == {"COMPUTE_TARGET": "local", "RK_BUCKET": "s3://b/p", "MAX_GPU_HOURS": "2", "EMPTY": ""}


@pytest.mark.parametrize("line", ["NOT A LINE", "X=$(rm -rf ~)", "Y=`id`"])
def test_env_file_refuses_code(tmp_path, line):
    f = tmp_path / "e.env"
    f.write_text(f"A=1\n{line}\n")
    with pytest.raises(KitError, match=r"e.env:2: "):
        parse_env_file(f)


def test_precedence_env_over_file_over_default(tmp_path):
    (tmp_path / ".orchestration-kit.env").write_text("COMPUTE_TARGET=ec2\nMAX_GPU_HOURS=2\n")
    s = Settings(tmp_path, environ={"MAX_GPU_HOURS": "9"})
    assert (s["COMPUTE_TARGET"], s["MAX_GPU_HOURS"], s["RK_RESULTS_SUBDIR"]) == ("ec2", "9", "results")
    assert s.number("MAX_GPU_HOURS") == 9.0 and s.max_hours("0.5") == 9.0
    assert s.with_flags(MAX_GPU_HOURS="3", RK_BUCKET=None).max_hours("0.5") == 3.0
    assert Settings(tmp_path, environ={}).max_hours("0.5") == 2.0  # the file is over the spec
    (tmp_path / ".orchestration-kit.env").unlink()
    assert Settings(tmp_path, environ={}).max_hours("0.5") == 0.5 and Settings(tmp_path, environ={}).max_hours() == 4


def test_the_old_name_of_max_hours_is_an_error_not_silence(tmp_path):
    with pytest.raises(KitError, match="RK_MAX_HOURS is now called MAX_GPU_HOURS"):
        Settings(tmp_path, environ={"RK_MAX_HOURS": "12"})


def test_unreadable_env_file_is_one_clear_error(tmp_path):
    (tmp_path / ".orchestration-kit.env").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(KitError, match="cannot read"):
        Settings(tmp_path)


def test_non_numeric_setting(tmp_path):
    with pytest.raises(KitError, match="MAX_GPU_HOURS='lots' is not a number; set it to e.g. 4"):
        Settings(tmp_path, environ={"MAX_GPU_HOURS": "lots"}).number("MAX_GPU_HOURS")
