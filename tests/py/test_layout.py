"""The layout holds: one place for each thing (settings, the run protocol, each cloud), docs
that agree with the code, and the README's command lists that agree with --help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from researchkit_py.clouds.registry import CLOUDS, TARGETS
from researchkit_py.settings import DEFAULTS

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "researchkit_py"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_only_the_settings_and_the_vm_entry_read_the_environment():
    readers = sorted(str(p.relative_to(PACKAGE)) for p in SOURCES if "os.environ" in _text(p) or "os.getenv" in _text(p))
    assert readers == ["settings.py", "vm_agent.py"]


def test_no_module_grows_past_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in SOURCES if (n := len(_text(p).splitlines())) > 300}
    assert not long, f"split these along a seam: {long}"


def test_only_the_protocol_spells_a_bucket_key():
    key = re.compile(r"""["'](runs/|code/|[^"'\s]*(status|manifest)\.json|logs/run\.log)""")
    spelled = [f"{p.relative_to(PACKAGE)}:{n}" for p in SOURCES if p.name != "protocol.py"
               for n, line in enumerate(_text(p).splitlines(), 1)
               if key.search(line) and not line.strip().startswith(("#", '"""'))]
    assert not spelled


def test_only_the_registry_names_a_cloud_module():
    """Callers ask the registry; a cloud's own modules are imported by it (or by the VM agent,
    through the store class the client names)."""
    direct = re.compile(r"^\s*from \.+clouds\.(local|gce|ec2)\b|import researchkit_py\.clouds\.(local|gce|ec2)", re.M)
    outside = [str(p.relative_to(PACKAGE)) for p in SOURCES
               if "clouds" not in p.relative_to(PACKAGE).parts and direct.search(_text(p))]
    assert not outside
    for name, cloud in CLOUDS.items():
        folder = PACKAGE / "clouds" / name
        assert {"cloud.py", "provider.py", "store.py"} <= {p.name for p in folder.iterdir()}, name
        assert cloud.provider.startswith(f"researchkit_py.clouds.{name}.") and cloud.store.startswith(
            f"researchkit_py.clouds.{name}.")
    assert set(TARGETS) == {"sandbox", *CLOUDS}


def _documented_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (`[^`]*`|—) \|", _text(REPO / "docs" / "settings.md"), re.M)
    return {name: default.strip("`") if default != "—" else "" for name, default in rows}


def test_docs_settings_match_the_defaults_in_code():
    in_code = {**DEFAULTS, **{k: v for cloud in CLOUDS.values() for k, v in cloud.defaults.items()}}
    assert _documented_settings() == in_code


def test_every_setting_the_code_reads_is_documented():
    read = re.compile(r"""(?:settings|self)\.(?:get|text|number|integer|flag|source)\(\s*"([A-Z][A-Z0-9_]+)"|"""
                      r"""settings\[\s*"([A-Z][A-Z0-9_]+)"\s*\]|environ\.get\(\s*"([A-Z][A-Z0-9_]+)\"""")
    names = {m for p in SOURCES for groups in read.findall(_text(p)) for m in groups if m}
    standard = {"HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"}
    assert names - standard - set(_documented_settings()) == set()
    assert "MAX_GPU_HOURS" in names  # the pattern does find what it looks for


def _readme_table(heading: str) -> list[str]:
    section = _text(REPO / "README.md").split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [m.split()[0] for m in re.findall(r"^\| `([^`]+)` \|", section, re.M)]


def test_readme_lists_the_commands_experiment_sh_has():
    out = subprocess.run([str(REPO / "experiment.sh"), "help"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^  ([a-z-]+)\b", out, re.M)
    assert _readme_table("experiment.sh") == listed


def test_readme_lists_the_commands_cloud_run_has():
    out = subprocess.run([str(REPO / "tools" / "cloud-run"), "--help"], capture_output=True, text=True, check=True)
    assert _readme_table("tools/cloud-run") == re.findall(r"^    ([a-z-]+)\s", out.stdout, re.M)


def test_readme_lists_the_later_commands_of_detached():
    from researchkit_py.detached import LATER_COMMANDS

    out = subprocess.run([sys.executable, "-m", "researchkit_py.detached", "--help"], capture_output=True, text=True)
    assert _readme_table("Fire and forget on GCE") == list(LATER_COMMANDS)
    assert re.findall(r"^  ([a-z-]+) ", out.stdout.split("later", 1)[1], re.M) == list(LATER_COMMANDS)
