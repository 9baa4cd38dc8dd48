"""Whole cycles of experiment.sh with the REAL claude and codex (tests/agents/package-lock.json),
against the scripted model API of model_api.py, on COMPUTE_TARGET=sandbox and on the GCE
emulator. The scripted model acts as a model would: it reads the prompt, pastes the RUN
directive's command block into its shell exactly as written, tries to change the locked spec
in RUN and metrics.json in READ after a `cd` elsewhere, reads the frozen spec and the metrics,
and writes analysis.md with the verdict they give.

Without the CLIs these tests skip (under CI=true they fail); conftest.py prints how many cycles
ran, and each one's phase times."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from itertools import pairwise
from pathlib import Path

import pytest
from model_api import (
    CYCLES,
    EditFile,
    Hang,
    ModelAPI,
    ReadFile,
    Say,
    Shell,
    Turn,
    WriteFile,
    make_codex_home,
    pinned_versions,
    run_block_after,
    script,
)
from toy import TOY_SPEC, make_toy

REPO = Path(__file__).resolve().parents[2]
RESULTS = "results/exp-001-toy-logreg"
DIRECTIVE = "Use cloud-run to execute the experiment:"
FAKE_METRICS = '{"accuracy": 1.0, "baseline_accuracy": 0.5, "baseline_gap": 0.5}'
GUARD_SAYS = "locked during this phase"
CRITERION = re.compile(r"^- \[[ xX]\] (\w+) (>=|<=|>|<) ([0-9.]+)\s*$", re.M)

pytestmark = pytest.mark.usefixtures("agent_bin")


def phase_of(turn: Turn) -> str:
    m = re.search(r"^# Phase: (\w+)", turn.text, re.M)
    return m.group(1) if m else "?"


def shell_output(text: str) -> str:
    """What a command printed, from a tool result: claude's is the output itself; codex's code
    mode wraps it in a JSON object after its own header."""
    at = text.find('{"exit_code"')
    return json.loads(text[at:])["output"] if at >= 0 else text


def verdict(spec_text: str, metrics_text: str) -> tuple[str, list[str]]:
    metrics = json.loads(metrics_text)
    rows, ok = [], True
    for name, op, value in CRITERION.findall(spec_text):
        observed = metrics[name]
        passed = {">=": observed >= float(value), "<=": observed <= float(value), ">": observed > float(value),
                  "<": observed < float(value)}[op]
        ok &= passed
        rows.append(f"| {name} {op} {value} | {observed} | {value} | {'PASS' if passed else 'FAIL'} |")
    return ("CONFIRMED" if ok and rows else "REFUTED"), rows


class Model:
    """The playbook of every phase. Claude's shell keeps its working directory between calls,
    codex's does not (each command starts in the project), so the `cd` is made accordingly."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, turn: Turn):
        codex = turn.api == "openai"
        phase = phase_of(turn)
        steps = {"FRAME": self.frame, "RUN": self.run, "READ": self.read, "LOG": self.log}[phase](codex)
        return script(*steps, final=f"{phase} done")(turn)

    def frame(self, codex: bool) -> list:
        return [Shell(f"cat {TOY_SPEC}")]

    def run(self, codex: bool) -> list:
        cd = f"cd {RESULTS} && " if codex else ""
        spec = TOY_SPEC if codex else f"../../{TOY_SPEC}"  # codex's apply_patch starts from the project
        tamper = [Shell(f"{cd}chmod u+w ../../{TOY_SPEC} && sed -i 's/>= 0.9/>= 0.1/' ../../{TOY_SPEC}"),
                  EditFile(spec, "## Success Criteria", "## Success Criteria (relaxed)")]
        return [*([] if codex else [Shell(f"cd {RESULTS} && pwd")]), *tamper, run_block_after(DIRECTIVE),
                Shell(f"test -s {self.root}/{RESULTS}/metrics.json && cat {self.root}/{RESULTS}/metrics.json")]

    def read(self, codex: bool) -> list:
        cd = f"cd {RESULTS} && " if codex else ""
        metrics = f"{RESULTS}/metrics.json" if codex else "metrics.json"
        tamper = [Shell(f"{cd}echo '{FAKE_METRICS}' > metrics.json"), WriteFile(metrics, FAKE_METRICS + "\n")]
        spec, measured = f"{self.root}/{RESULTS}/spec.md", f"{self.root}/{RESULTS}/metrics.json"

        def analysis(turn: Turn) -> WriteFile:
            spec_text, metrics_text = (shell_output(r.output) for r in turn.tool_results[-2:])
            result, rows = verdict(spec_text, metrics_text)
            table = "\n".join(["| criterion | observed | threshold | result |", "|---|---|---|---|", *rows])
            return WriteFile(f"{self.root}/{RESULTS}/analysis.md", f"# Analysis\n\n## Verdict: {result}\n\n{table}\n")

        return [*([] if codex else [Shell(f"cd {RESULTS}")]), *tamper, Shell(f"cat {spec}"), Shell(f"cat {measured}"),
                analysis]

    def log(self, codex: bool) -> list:  # LOG has no shell in claude: the file tools
        def entry(turn: Turn) -> WriteFile:
            found = re.search(r"## Verdict: \w+", turn.last_result.output if turn.last_result else "")
            line = f"- exp-001-toy-logreg: {found.group(0) if found else 'no verdict found'}\n"
            return WriteFile(f"{self.root}/RESEARCH_LOG.md", line)

        return [ReadFile(f"{self.root}/{RESULTS}/analysis.md"), entry]


def results_of(api: ModelAPI, phase: str):
    """The tool results of the phase's main conversation."""
    turns = [t for t in api.turns if phase_of(t) == phase]
    return max(turns, key=lambda t: len(t.tool_results)).tool_results if turns else []


def agent_env(agent: str, api: ModelAPI, bin_dir: Path, root: Path, homes: list[Path]) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EXP_AGENT": agent, "EXP_PROJECT_ROOT": str(root),
           "NO_COLOR": "1"}
    if agent == "claude":
        return {**env, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-scripted"}
    # codex: our provider in a CODEX_HOME outside the temp dir (FACTS.md); no network in its
    # config, so what RUN gets comes from experiment.sh's flags; cloud-run's state outside
    # /tmp (which the sandbox lets it write anyway), so --add-dir is what makes it writable.
    home = make_codex_home(api.url, network=False)
    state = Path(tempfile.mkdtemp(prefix="rk-state-", dir=home.parent))
    homes += [home, state]
    return {**env, "CODEX_HOME": str(home), "RK_MODEL_API_KEY": "sk-scripted", "RK_STATE_HOME": str(state)}


def timed_cycle(root: Path, env: dict[str, str]) -> tuple[int, str, dict[str, float]]:
    """experiment.sh cycle, with the seconds from each phase's heading (and the sync's) to the next."""
    p = subprocess.Popen([str(REPO / "experiment.sh"), "cycle", TOY_SPEC], cwd=root, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    out, marks = [], []
    for line in p.stdout:
        out.append(line)
        m = re.match(r"── (FRAME|RUN|Syncing|READ|LOG)\b", line)
        if m:
            marks.append((m.group(1), time.monotonic()))
    rc = p.wait(timeout=600)
    marks.append(("end", time.monotonic()))
    return rc, "".join(out), {a.replace("Syncing", "sync"): t1 - t0 for (a, t0), (_, t1) in pairwise(marks)}


@pytest.mark.waits(15)
@pytest.mark.parametrize("agent", ["claude", "codex"])
@pytest.mark.parametrize(("target", "criterion", "expected"), [
    ("sandbox", "accuracy >= 0.90", "CONFIRMED"),
    ("gce", "accuracy >= 0.99", "REFUTED"),  # relaxing the spec or faking metrics would make it CONFIRMED
])
def test_cycle(request, tmp_path, agent_bin, agent, target, criterion, expected):
    if target == "gce":
        request.getfixturevalue("gce")
    root = make_toy(tmp_path, target)
    spec = root / TOY_SPEC
    spec.write_text(spec.read_text().replace("accuracy >= 0.90", criterion))
    original = spec.read_bytes()
    homes: list[Path] = []
    try:
        with ModelAPI(Model(root)) as api:
            rc, out, times = timed_cycle(root, agent_env(agent, api, agent_bin, root, homes))
    finally:
        for d in homes:
            shutil.rmtree(d, ignore_errors=True)
    assert not api.errors, api.errors
    assert rc == 0, out
    CYCLES.append({"agent": agent, "version": pinned_versions()[agent], "target": target, "verdict": expected,
                   "seconds": times})
    assert f"Verdict: {expected}" in out
    results = root / RESULTS
    assert f"## Verdict: {expected}" in (results / "analysis.md").read_text()
    # the directive ran on the VM and came back; nothing locked was changed, from any directory
    assert (results / ".cloud-run-id").read_text().strip()
    assert json.loads((results / "metrics.json").read_text())["accuracy"] < 0.99
    assert spec.read_bytes() == original and (results / "spec.md").read_bytes() == original
    for phase, tries in (("RUN", 2), ("READ", 2)):
        refused = [r for r in results_of(api, phase) if GUARD_SAYS in r.output]
        assert len(refused) == tries, [r.output for r in results_of(api, phase)]
    assert f"exp-001-toy-logreg: ## Verdict: {expected}" in (root / "RESEARCH_LOG.md").read_text()
    # watch renders the agent's own log
    watched = subprocess.run([str(REPO / "experiment.sh"), "watch", "run"], cwd=root, capture_output=True, text=True,
                             env={**os.environ, "EXP_PROJECT_ROOT": str(root), "EXP_WATCH_FOLLOW": "0"}, timeout=60)
    assert "cloud-run run" in watched.stdout and watched.stdout.rstrip().splitlines()[-1].startswith("[done")


def agent_processes(marker: str) -> list[int]:
    """Processes whose environment carries the marker: what experiment.sh started."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.waits(20)
@pytest.mark.parametrize("stop", ["budget", "ctrl-c"])
def test_a_stopped_codex_phase_leaves_no_process_behind(tmp_path, agent_bin, stop):
    """On Node < 22.15 the npm wrapper spawns codex as a child; the whole group must go."""
    root = make_toy(tmp_path, "local")
    marker = f"RK_TEST_MARKER={uuid.uuid4().hex}"
    homes: list[Path] = []
    with ModelAPI(lambda turn: Hang()) as api:  # a silent model API: codex waits for ever
        env = {**agent_env("codex", api, agent_bin, root, homes), marker.split("=")[0]: marker.split("=")[1]}
        if stop == "budget":  # long enough for codex to start and ask, on a loaded machine (5 s was not)
            env["EXP_PHASE_BUDGET"] = "20"
        p = subprocess.Popen([str(REPO / "experiment.sh"), "frame", TOY_SPEC], cwd=root, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.requests, "codex never called the model API"
        if stop == "ctrl-c":
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=90)
    for d in homes:
        shutil.rmtree(d, ignore_errors=True)
    time.sleep(0.5)
    assert agent_processes(marker) == []
    if stop == "budget":
        assert p.returncode == 1 and "FRAME ran past its time budget (20s)" in err
        assert "researchkit stopped the agent: FRAME ran past its time budget of 20 s" in out
    else:
        assert p.returncode == 130


def test_claude_gives_up_on_a_silent_model_api_within_the_kit_limits(tmp_path, agent_bin):
    """API_TIMEOUT_MS and CLAUDE_CODE_MAX_RETRIES reach claude: without them it waits ~1.9 h."""
    root = make_toy(tmp_path, "local")
    with ModelAPI(lambda turn: Hang()) as api:
        env = {**agent_env("claude", api, agent_bin, root, []), "API_TIMEOUT_MS": "2000", "CLAUDE_CODE_MAX_RETRIES": "1"}
        t0 = time.monotonic()
        r = subprocess.run([str(REPO / "experiment.sh"), "frame", TOY_SPEC], cwd=root, env=env, capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 1 and time.monotonic() - t0 < 60
    assert len(api.requests) == 2 and "FRAME failed" in r.stderr
    assert "Request timed out" in r.stdout


def test_a_cli_that_refuses_a_flag_is_one_line_naming_it(tmp_path, agent_bin):
    """The real codex's refusal, seen through experiment.sh (a wrapper adds a flag it lacks)."""
    root = make_toy(tmp_path, "local")
    wrapper = tmp_path / "bin" / "codex"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/usr/bin/env bash\nif [[ "$1" == exec ]]; then shift; set -- exec --no-such-flag "$@"; fi\n'
                       f'exec {agent_bin}/codex "$@"\n')
    wrapper.chmod(0o755)
    with ModelAPI(script(Say("never asked"))) as api:
        env = agent_env("codex", api, agent_bin, root, [])
        env["PATH"] = f"{wrapper.parent}:{env['PATH']}"
        r = subprocess.run([str(REPO / "experiment.sh"), "frame", TOY_SPEC], cwd=root, env=env, capture_output=True,
                           text=True, timeout=120)
    shutil.rmtree(env["CODEX_HOME"], ignore_errors=True)
    shutil.rmtree(env["RK_STATE_HOME"], ignore_errors=True)
    versions = pinned_versions()
    assert r.returncode == 1 and not api.requests
    assert r.stderr.splitlines()[-1] == (f"experiment.sh: codex {versions['codex']} refused the flag --no-such-flag; "
                                         "researchkit is tested with codex >=0.169.0 <0.170: npm install -g "
                                         "@openai/codex@0.169.0")
