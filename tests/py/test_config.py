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


@pytest.mark.parametrize(("environ", "expect"), [
    ({"RK_STATE_HOME": "/s", "XDG_STATE_HOME": "/x", "HOME": "/h"}, "/s"),
    ({"XDG_STATE_HOME": "/x", "HOME": "/h"}, "/x/researchkit"),
    ({"HOME": "/h"}, "/h/.local/state/researchkit"),
    ({"RK_STATE_HOME": "", "XDG_STATE_HOME": "", "HOME": "/h"}, "/h/.local/state/researchkit"),  # empty is unset
])
def test_where_the_tool_keeps_its_state(tmp_path, environ, expect):
    from pathlib import Path

    assert Settings(tmp_path, environ, read_file=False).state_home() == Path(expect)


@pytest.mark.parametrize(("line", "value"), [
    ('A="quoted # not a comment"', "quoted # not a comment"), ("A='single'", "single"), ('A="', '"'),
    ("A=\"mixed'", "\"mixed'"), ("A=''", ""), ("A=plain # a comment", "plain"), ("A=x", "x"),
])
def test_env_file_values_as_a_shell_would_read_them(tmp_path, line, value):
    (tmp_path / "e.env").write_text(line + "\n")
    assert parse_env_file(tmp_path / "e.env") == {"A": value}


def test_a_bad_env_file_line_is_quoted_at_most_40_characters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.env").write_text("# fine\n\n" + "not a setting " * 5 + "\n")
    with pytest.raises(KitError) as e:
        parse_env_file(tmp_path / "e.env")
    assert str(e.value) == f"e.env:3: expected KEY=value, got {('not a setting ' * 5).strip()[:40]!r}"  # relative to here


def test_values_with_defaults_numbers_and_flags(tmp_path):
    s = Settings(tmp_path, {"N": "2.5", "EMPTY": "", "YES": " Yes ", "NO": "0", "BAD": "x"}, read_file=False)
    assert (s.text("EMPTY", "d"), s.text("N", "d"), s.text("UNSET", "d")) == ("d", "2.5", "d")
    assert (s.number("N"), s.number("EMPTY", 3), s.number("UNSET", 0), s.integer("N")) == (2.5, 3.0, 0.0, 2)
    assert (s.flag("YES"), s.flag("NO"), s.flag("UNSET")) == (True, False, False)
    for key in ("BAD", "UNSET"):
        with pytest.raises(KitError, match=f"^{key}=.* is not a number; set it to e.g. 1$"):
            s.number(key)


def test_the_project_root_comes_from_the_argument_then_exp_project_root(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".orchestration-kit.env").write_text("FROM_FILE=1\n")
    monkeypatch.chdir(tmp_path)
    assert Settings(None, {"EXP_PROJECT_ROOT": str(tmp_path / "p")}).get("FROM_FILE") == "1"
    assert Settings(tmp_path / "p", {}).root == (tmp_path / "p").resolve()
    assert Settings(None, {}).root == tmp_path.resolve()


@pytest.mark.parametrize("budget", ["soon", ["2"]])
def test_a_spec_budget_that_is_not_a_number_is_one_clear_error(tmp_path, budget):
    with pytest.raises(KitError, match=r"^the spec's max_gpu_hours .* is not a number of hours$"):
        Settings(tmp_path, {}, read_file=False).max_hours(budget)
    assert Settings(tmp_path, {}, read_file=False).max_hours("2.5") == 2.5
