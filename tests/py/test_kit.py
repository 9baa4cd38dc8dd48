"""The Python helpers behind experiment.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from researchkit_py.errors import KitError
from researchkit_py.experiment.criteria import evaluate, read_metrics
from researchkit_py.experiment.locks import lock, unlock
from researchkit_py.experiment.prompts import compute_directive, render
from researchkit_py.experiment.spec import NEEDS_RUN, load_spec, parse_spec
from researchkit_py.experiment.streamlog import render_event, summary

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "toy" / "experiments" / "exp-001-toy-logreg.md"


def test_example_spec_parses_completely():
    spec = load_spec(EXAMPLE)
    assert spec.id == "exp-001-toy-logreg"
    assert spec.run_command == 'python3 train.py --out "$RESULTS_DIR"'
    assert [c.text for c in spec.criteria] == ["accuracy >= 0.90", "baseline_gap >= 0.10"]
    assert spec.estimated_hours == 0.01 and spec.profile["compute_type"] == "cpu"
    assert spec.budget["max_gpu_hours"] == "0.1"
    assert spec.problems() == []


def test_template_is_a_valid_spec():
    assert load_spec(REPO / "templates" / "experiment-spec.md").problems() == []


def test_missing_pieces_are_all_listed(tmp_path):
    spec = parse_spec("# x\n\n## Hypothesis\nh\n\n## Run\nno fence here\n", tmp_path / "exp-1.md")
    problems = spec.problems()
    assert "missing section '## Variables'" in problems and "missing section '## Success Criteria'" in problems
    assert f"missing {NEEDS_RUN}" in problems
    assert "missing a '### Compute Profile' section" in problems


@pytest.mark.parametrize("block,expect", [
    ("compute_type: [unclosed", "valid YAML in the compute profile (line 1 of the block)"),
    ("- just\n- a list", "a YAML mapping"),
    ("compute_type: cpu", "estimated_wall_hours (a number) in the compute profile"),
])
def test_malformed_compute_profile(tmp_path, block, expect):
    text = EXAMPLE.read_text().split("### Compute Profile")[0] + f"### Compute Profile\n```yaml\n{block}\n```\n"
    problems = parse_spec(text, tmp_path / "e.md").problems()
    assert any(expect in p for p in problems), problems


def test_headings_inside_code_fences_are_not_sections(tmp_path):
    text = EXAMPLE.read_text().replace("## Run\n", "## Run\n```bash\n# not a heading\n## nor this\necho hi\n```\nignored\n", 1)
    assert parse_spec(text, tmp_path / "e.md").run_command == "# not a heading\n## nor this\necho hi"


@pytest.mark.parametrize("metrics,verdict", [
    ({"accuracy": 0.95, "gap": {"vs_base": 0.2}}, "CONFIRMED"),
    ({"accuracy": 0.85, "gap": {"vs_base": 0.2}}, "REFUTED"),
    ({"accuracy": 0.95}, "INCONCLUSIVE"),  # a metric is missing
    ({"accuracy": 0.95, "gap": {"vs_base": "big"}}, "INCONCLUSIVE"),
    ({"aborted": True, "accuracy": 0.99, "gap": {"vs_base": 1}}, "INCONCLUSIVE"),
    (None, "INCONCLUSIVE"),
])
def test_verdicts(metrics, verdict):
    result, checks = evaluate(["accuracy >= 0.90", "`gap.vs_base` > 0.1"], metrics)
    assert result == verdict


def test_uncheckable_criterion_never_confirms():
    result, checks = evaluate(["accuracy >= 0.9", "the plots look reasonable"], {"accuracy": 0.95})
    assert result == "INCONCLUSIVE" and checks[1].result == "UNCHECKABLE"
    assert evaluate(["loss < 0.5", "n != 0"], {"loss": 0.7, "n": 3})[0] == "REFUTED"


def test_unreadable_metrics(tmp_path):
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(KitError, match="must hold a JSON object"):
        read_metrics(tmp_path / "m.json")
    assert read_metrics(tmp_path / "absent.json") is None
    (tmp_path / "m.json").write_text("{accuracy: 0.9}")
    with pytest.raises(KitError, match=r"m.json is not valid JSON \(.*\); fix it or re-run the experiment$"):
        read_metrics(tmp_path / "m.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(KitError, match=r"^cannot read .*dir.json: Is a directory; check its permissions$"):
        read_metrics(tmp_path / "dir.json")


def test_metrics_json_is_read_as_written_and_decides_the_verdict(tmp_path):
    """READ's verdict comes from the metrics the run wrote: read back exactly, nested objects
    and all, they confirm the hypothesis; a run that wrote none is INCONCLUSIVE."""
    metrics = {"accuracy": 0.95, "gap": {"vs_base": 0.2}, "note": "ok", "n": 3}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert read_metrics(tmp_path / "metrics.json") == metrics
    criteria = ["accuracy >= 0.90", "`gap.vs_base` > 0.1"]
    assert evaluate(criteria, read_metrics(tmp_path / "metrics.json"))[0] == "CONFIRMED"
    assert evaluate(criteria, read_metrics(tmp_path / "none.json"))[0] == "INCONCLUSIVE"


def test_directives():
    kw = dict(okit="/kit", spec="experiments/e.md", results="results/e", command='python t.py --out "$RESULTS_DIR"',
              data_dir=None, max_hours="2")
    assert compute_directive("local", **kw) == ""
    ec2 = compute_directive("ec2", **kw)
    assert "## Compute Directive (MANDATORY — EC2)" in ec2 and "--backend ec2" in ec2 and "--data-dirs" not in ec2
    assert "  /kit/tools/cloud-run run \\\n      --backend ec2 \\\n      --spec experiments/e.md \\\n" in ec2
    assert "\n'python t.py --out \"$RESULTS_DIR\"'\n" in ec2  # shown single-quoted, never in the command block
    assert "--data-dirs data/" in compute_directive("gce", **{**kw, "data_dir": "data"})
    assert "'/my kit/tools/cloud-run' run" in compute_directive("gce", **{**kw, "okit": "/my kit"})
    with pytest.raises(KitError, match="not one of local, ec2, gce, sandbox"):
        compute_directive("azure", **kw)


def test_prompts_exist_for_every_phase_and_fill_values():
    text = render("run", {"spec": "experiments/e.md", "results_dir": "results/e", "compute_advisory": "ADVICE"})
    assert "experiments/e.md" in text and "RESULTS_DIR=results/e." in text and "ADVICE" in text and "{{" not in text
    for phase in ("survey", "frame", "read", "log", "synthesize"):
        assert "{{" not in render(phase, {})


def guard(event: dict, protected: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "guard-hook"), *map(str, protected)],
                          input=json.dumps({**event, "cwd": str(cwd)}), text=True, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


PATCH = "*** Begin Patch\n*** {} File: {}\n@@\n-a\n+b\n*** End Patch\n"


@pytest.mark.parametrize("cwd,event,blocked", [
    (".", {"tool_name": "Edit", "tool_input": {"file_path": "experiments/e.md"}}, True),
    ("results/e", {"tool_name": "Edit", "tool_input": {"file_path": "../../experiments/e.md"}}, True),
    ("results/e", {"tool_name": "Write", "tool_input": {"file_path": "metrics.json"}}, True),
    (".", {"tool_name": "Write", "tool_input": {"file_path": "/P/results/e/metrics.json"}}, True),
    ("results/e", {"tool_name": "Write", "tool_input": {"file_path": "analysis.md"}}, False),
    (".", {"tool_name": "Bash", "tool_input": {"command": "sed -i s/0.9/0.5/ experiments/e.md"}}, True),
    ("results", {"tool_name": "Bash", "tool_input": {"command": "cd e && echo '{}' > metrics.json"}}, True),
    ("/", {"tool_name": "Bash", "tool_input": {"command": "chmod u+w /P/experiments/e.md"}}, True),
    (".", {"tool_name": "Bash", "tool_input": {"command": "cp /tmp/m.json results/e/ && rm -rf results"}}, True),
    (".", {"tool_name": "Bash", "tool_input": {"command": "python3 -c \"open('results/e/metrics.json', 'w')\""}}, True),
    (".", {"tool_name": "Bash", "tool_input": {"command": "cat results/e/metrics.json | python3 -m json.tool"}}, False),
    (".", {"tool_name": "Bash", "tool_input": {"command": "cp model.pkl results/e/ 2>&1 | tee results/e/log.txt"}}, False),
    (".", {"tool_name": "Bash", "tool_input": {"command": "cat >results/e/analysis.md <<'EOF'\nmetrics.json's values\nEOF"}},
     False),
    (".", {"tool_name": "apply_patch", "tool_input": {"command": PATCH.format("Update", "experiments/e.md")}}, True),
    ("results", {"tool_name": "apply_patch", "tool_input": {"command": PATCH.format("Delete", "e/metrics.json")}}, True),
    (".", {"tool_name": "apply_patch", "tool_input": {"command": PATCH.format("Add", "results/e/analysis.md")}}, False),
    (".", {"tool_name": "Read", "tool_input": {"file_path": "experiments/e.md"}}, False),
])
def test_guard_hook_protocol(tmp_path, cwd, event, blocked):
    """The hook gets absolute paths: the model's working directory changes nothing."""
    (tmp_path / "results" / "e").mkdir(parents=True)
    event = json.loads(json.dumps(event).replace("/P/", f"{tmp_path}/"))
    protected = [tmp_path / "experiments" / "e.md", tmp_path / "results" / "e" / "metrics.json"]
    r = guard({"hook_event_name": "PreToolUse", **event}, protected, (tmp_path / cwd).resolve())
    assert r.returncode == (2 if blocked else 0), r.stderr
    assert ("locked during this phase" in r.stderr) == blocked


def test_guard_allows_everything_when_nothing_is_protected(tmp_path):
    assert guard({"tool_name": "Edit", "tool_input": {"file_path": "x"}}, [], tmp_path).returncode == 0


def test_locks_restore_exact_modes_and_nest(tmp_path):
    d = tmp_path / "res"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a")
    os.chmod(d / "a.txt", 0o640)
    (d / "sub" / "b.txt").write_text("b")
    spec = tmp_path / "spec.md"
    spec.write_text("s")
    os.chmod(spec, 0o600)
    r1, r2 = tmp_path / "l1.json", tmp_path / "l2.json"
    lock(r1, [d])
    lock(r2, [spec], exact_mode=0o444)
    assert oct(os.stat(d / "a.txt").st_mode & 0o777) == "0o440" and oct(os.stat(spec).st_mode & 0o777) == "0o444"
    assert not os.stat(d / "sub").st_mode & 0o222
    unlock(r2)
    assert os.stat(spec).st_mode & 0o777 == 0o600 and not os.stat(d / "a.txt").st_mode & 0o200
    unlock(r1)
    assert os.stat(d / "a.txt").st_mode & 0o777 == 0o640 and os.stat(d / "sub").st_mode & 0o200
    assert not r1.exists() and unlock(r1) == 0


def test_stream_rendering_and_summary(tmp_path):
    log = tmp_path / "run.log"
    events = [
        {"type": "system", "subtype": "init", "model": "claude-x"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "Running it"},
                                                      {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result", "content": "a.txt"}]}},
        {"type": "result", "is_error": False, "result": "All done", "duration_ms": 1500, "total_cost_usd": 0.12},
    ]
    log.write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    rendered = [render_event(line) for line in log.read_text().splitlines()]
    assert rendered == ["[init] claude-x", 'Running it\n→ Bash {"command": "ls"}', "← a.txt",
                        "[done in 1.5s, $0.12] All done", "not json"]
    assert summary(log) == "All done\n(1 tool calls)"


def test_codex_events_rendering_and_summary(tmp_path):
    """codex exec --json, in the shapes tests/agents/FACTS.md records."""
    log = tmp_path / "read.log"
    cmd = {"id": "item_0", "type": "command_execution", "command": "/bin/bash -lc 'cat metrics.json'",
           "aggregated_output": "", "exit_code": None, "status": "in_progress"}
    events = [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "turn.started"},
        {"type": "item.started", "item": cmd},
        {"type": "item.completed", "item": {**cmd, "aggregated_output": '{"accuracy": 0.92}\n', "exit_code": 0,
                                            "status": "completed"}},
        {"type": "item.completed", "item": {"id": "item_1", "type": "file_change", "status": "completed",
                                            "changes": [{"path": "/p/results/e/analysis.md", "kind": "add"}]}},
        {"type": "item.completed", "item": {"id": "item_2", "type": "error", "message": "Model metadata not found"}},
        {"type": "error", "message": "Reconnecting... 1/1"},
        {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": "## Verdict: CONFIRMED"}},
        {"type": "turn.completed", "usage": {"input_tokens": 120, "cached_input_tokens": 0, "output_tokens": 30}},
    ]
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    rendered = [r for line in log.read_text().splitlines() if (r := render_event(line))]
    assert rendered == ["[init] codex thread t-1", "→ $ /bin/bash -lc 'cat metrics.json'",
                        '← exit 0: {"accuracy": 0.92}', "✎ add /p/results/e/analysis.md",
                        "[warning] Model metadata not found", "[error] Reconnecting... 1/1", "## Verdict: CONFIRMED",
                        "[done] 120 tokens in, 30 out"]
    assert summary(log) == "## Verdict: CONFIRMED\n(2 tool calls)"
    log.write_text(json.dumps({"type": "turn.failed", "error": {"message": "stream disconnected"}}) + "\n")
    assert summary(log) == "ERROR: stream disconnected"
    retry = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 3, "error_status": 529,
             "error": "overloaded"}
    assert render_event(json.dumps(retry)) == "[retry 1/3] 529 overloaded"


def test_kit_helper_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "researchkit_py.experiment.cli", "begin", "run", "--spec", "nope.md"],
                       cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == ["experiment.sh: spec nope.md not found; specs live in experiments/ (copy templates/experiment-spec.md)"]
