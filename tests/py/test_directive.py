"""The RUN directive as a model uses it: its command block pasted into bash, exactly as
rendered, runs the spec's `## Run` command unchanged on the VM (the embedded provider here).
The block is found the way the scripted model API finds it (model_api.block_after), not with
the kit's own parser."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from model_api import block_after

REPO = Path(__file__).resolve().parents[2]
DIRECTIVE = "Use cloud-run to execute the experiment:"
SPEC = "experiments/exp-002-quoting.md"
# Two lines and more, $RESULTS_DIR, $(…), backticks and backslashes: each must reach the VM as written.
RUN_BLOCK = r"""echo "$RESULTS_DIR" > "$RESULTS_DIR/where.txt"
echo "$(printenv RK_RUN_ID)" > "$RESULTS_DIR/subst.txt"
echo `printenv RK_RUN_ID` > "$RESULTS_DIR/ticks.txt"
printf '%s\n' 'a\\b' "c\\d" > "$RESULTS_DIR/slashes.txt"
echo '{"accuracy": 1.0}' > "$RESULTS_DIR/metrics.json"
"""


@pytest.fixture
def quoting_project(tmp_path) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(REPO / "examples" / "toy", root)
    (root / ".orchestration-kit.env").write_text("COMPUTE_TARGET=sandbox\n")
    toy = (root / "experiments" / "exp-001-toy-logreg.md").read_text()
    spec = re.sub(r"## Run\n```bash\n.*?```", lambda _: f"## Run\n```bash\n{RUN_BLOCK}```", toy, flags=re.S)
    (root / SPEC).write_text(spec)
    return root


def client_env(root: Path) -> dict[str, str]:
    # Set on the client to show that nothing of the command expands here.
    return {**os.environ, "EXP_PROJECT_ROOT": str(root), "EXP_AGENT": "scripted", "RESULTS_DIR": "/client-side",
            "RK_RUN_ID": "client-side"}


def rendered_run_prompt(root: Path) -> str:
    """The RUN prompt experiment.sh gives the agent (`kit begin run`), locks released after."""
    script = ('eval "$("$1/tools/_py" researchkit_py.experiment.cli begin run --spec "$2")"\n'
              'cat "$PROMPT_FILE"; "$1/tools/_py" researchkit_py.experiment.cli unlock "$LOCK_RECORD"')
    r = subprocess.run(["bash", "-c", script, "-", str(REPO), SPEC], cwd=root, env=client_env(root),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def paste(command: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=root, env=client_env(root), capture_output=True, text=True,
                          timeout=180)


def test_the_pasted_directive_runs_the_spec_command_unchanged_on_the_vm(quoting_project):
    root = quoting_project
    prompt = rendered_run_prompt(root)
    block = block_after(prompt, DIRECTIVE)
    r = paste(block, root)
    assert r.returncode == 0, r.stdout + r.stderr
    results = root / "results" / "exp-002-quoting"
    run_id = (results / ".cloud-run-id").read_text().strip()
    where = (results / "where.txt").read_text().strip()
    assert where.endswith("/results") and "client-side" not in where  # the VM's $RESULTS_DIR
    assert (results / "subst.txt").read_text() == (results / "ticks.txt").read_text() == run_id + "\n"
    assert (results / "slashes.txt").read_text() == "a\\\\b\nc\\d\n"
    # cloud-run shows the command it took from the spec single-quoted: pasted back, it runs the same.
    shown = re.search(r"^cloud-run: command \(the `## Run` block of [^)]*\): (.*?)\ncloud-run: launched", r.stderr,
                      re.S | re.M).group(1)
    assert shlex.split(shown) == [RUN_BLOCK.strip()]
    again = paste(f"{REPO}/tools/cloud-run run {shown} --backend local --output-dir results/again/", root)
    assert again.returncode == 0, again.stderr
    assert (root / "results" / "again" / "slashes.txt").read_text() == "a\\\\b\nc\\d\n"
    # The pull line is pasteable as well.
    pull = re.search(r"^    (.* pull .*)$", prompt, re.M).group(1)
    assert paste(pull, root).returncode == 0


SHELLCHECK = shutil.which("shellcheck", path=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (scripts/setup --test)")
def test_the_directive_commands_are_shellcheck_clean(quoting_project, tmp_path):
    prompt = rendered_run_prompt(quoting_project)
    pull = re.search(r"^    (.* pull .*)$", prompt, re.M).group(1)
    script = tmp_path / "pasted.sh"
    script.write_text(f"#!/usr/bin/env bash\n{block_after(prompt, DIRECTIVE)}\n{pull}\n")
    r = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_cloud_run_without_a_command_needs_a_spec_with_one(quoting_project):
    tool = str(REPO / "tools" / "cloud-run")
    none = paste(f"{tool} run --backend local", quoting_project)
    assert none.returncode == 2 and none.stderr.startswith("cloud-run: run needs a command (single-quoted")
    (quoting_project / SPEC).write_text(re.sub(r"```bash\n.*?```", "", (quoting_project / SPEC).read_text(), flags=re.S))
    empty = paste(f"{tool} run --backend local --spec {SPEC}", quoting_project)
    assert empty.returncode == 2 and len(empty.stderr.splitlines()) == 1
    assert empty.stderr.startswith(f"cloud-run: {SPEC} has no command in a ``` block under '## Run'")
