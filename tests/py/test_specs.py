"""Specs and their success criteria: one grammar, checked at FRAME; orchestration-kit's specs
read as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from researchkit_py.experiment.criteria import evaluate, parse
from researchkit_py.experiment.spec import NEEDS_RUN, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy" / "experiments" / "exp-001-toy-logreg.md"
OKIT = Path(__file__).parent / "specs" / "exp-004-okit-calibration.md"


@pytest.mark.parametrize("text,metric,op,number,other", [
    ("accuracy >= 0.90", "accuracy", ">=", 0.9, None),
    ("`gap.vs_base` > 1e-1", "gap.vs_base", ">", 0.1, None),
    ("loss < .5", "loss", "<", 0.5, None),
    ("n != -3", "n", "!=", -3, None),
    ("x ≥ 2", "x", ">=", 2, None),
    ("accuracy >= baseline_accuracy + 0.10", "accuracy", ">=", 0.1, "baseline_accuracy"),
    ("cv.acc.gbt >= cv.acc.logreg - 0.005", "cv.acc.gbt", ">=", -0.005, "cv.acc.logreg"),
    ("a == b", "a", "==", 0.0, "b"),
    ("**SC-1**: mean_r2 >= 0.05", "mean_r2", ">=", 0.05, None),
    ("C2: loss <= 0.3", "loss", "<=", 0.3, None),
])
def test_the_grammar(text, metric, op, number, other):
    c = parse(text)
    assert (c.metric, c.op, c.threshold, c.other, c.error) == (metric, op, number, other, "")


@pytest.mark.parametrize("text,why", [
    ("accuracy >= 0.9.5", "'0.9.5' is not a number"),
    ("accuracy >= 90%", "a unit (%) after the number; write it as metrics.json holds it (0.9, not 90%)"),
    ("accuracy >= 5pp", "a unit (pp) after the number"),
    ("expectancy >= $0.50/trade", "a unit ($) before the number"),
    ("accuracy >= 0.95 over the majority baseline", "words after the comparison ('over the majority baseline')"),
    ("**SC-1**: r2 >= 0.05 (with proper validation)", "words after the comparison ('(with proper validation)')"),
    ("accuracy >= baseline + 10%", "the offset '10%' is not a number"),
    ("accuracy >=", "nothing after '>='"),
    ("accuracy >= -baseline", "expected a number or a metric after '>='"),
])
def test_typos_units_and_trailing_words_are_errors(text, why):
    c = parse(text, line=7)
    assert c.error.startswith(why) and c.describe().startswith(f"line 7: {text!r}: {why}")


@pytest.mark.parametrize("text,why", [
    ("accuracy >= 0.9.5 overall", "'0.9.5' is not a number"),
    ("latency < 2ms", "a unit (ms) after the number"),
    ("latency < 2m", "a unit (m) after the number"),
    ("latency < 2sec", "a unit (sec) after the number"),             # a unit is up to 3 letters
    ("latency < 2secs", "words after the comparison ('secs')"),
    ("accuracy >= 90 %", "a unit (%) after the number"),
    ("accuracy >= 0.9 (val)", "words after the comparison ('(val)')"),  # short, but not a word
    ("accuracy >= 90% of the time", "a unit (%) after the number"),
    ("latency < 2ms overall", "a unit (ms) after the number"),
    ("accuracy >= 0.9 x", "words after the comparison ('x')"),
    ("accuracy >= 0.95 over the majority baseline on the held-out test set",
     "words after the comparison ('over the majority baseline on the held-o'); put explanations outside"),
    ("accuracy >= -a_very_long_metric_name_indeed", "expected a number or a metric after '>=', found '-a_very_long_metric_'"),
])
def test_where_a_unit_ends_and_words_begin(text, why):
    """What FRAME tells the user about the text after the number, quoted as they wrote it;
    outside a spec the message has no line number."""
    c = parse(text)
    assert c.error.startswith(why) and c.describe().startswith(f"{text!r}: {why}")


@pytest.mark.parametrize("text,shown", [
    ("the plots look reasonable", "-"), ("accuracy >= 90%", "-"), ("accuracy >= 0.9", ">= 0.9"),
    ("accuracy >= baseline", ">= baseline (= 0.5)"), ("accuracy >= baseline + 0.25", ">= baseline + 0.25 (= 0.75)"),
    ("accuracy >= baseline - 0.25", ">= baseline - 0.25 (= 0.25)"),
])
def test_the_threshold_as_reads_table_shows_it(text, shown):
    _, (check,) = evaluate([text], {"accuracy": 0.9, "baseline": 0.5})
    assert check.threshold_text == shown


def test_a_metric_compared_with_another_and_no_offset_is_compared_as_is():
    assert evaluate(["accuracy >= baseline"], {"accuracy": 0.5, "baseline": 0.5})[0] == "CONFIRMED"
    assert evaluate(["accuracy > baseline"], {"accuracy": 0.5, "baseline": 0.5})[0] == "REFUTED"


@pytest.mark.parametrize("text", ["the plots look reasonable", "Results reproducible across 3 seeds with std < 0.01",
                                  "_Criterion 1: [metric] [direction] [threshold] over [baseline]_", "ȳ_long ∈ [0.28, 0.38]"])
def test_criteria_in_words(text):
    assert parse(text).in_words


@pytest.mark.parametrize("metrics,verdict", [
    ({"accuracy": 0.92, "baseline_accuracy": 0.5}, "CONFIRMED"),
    ({"accuracy": 0.55, "baseline_accuracy": 0.5}, "REFUTED"),
    ({"accuracy": 0.92}, "INCONCLUSIVE"),  # the baseline is missing
    ({"accuracy": 0.92, "baseline_accuracy": True}, "INCONCLUSIVE"),
])
def test_comparison_against_another_metric(metrics, verdict):
    result, (check,) = evaluate(["accuracy >= baseline_accuracy + 0.10"], metrics)
    assert result == verdict
    if verdict != "INCONCLUSIVE":
        assert check.threshold_text == ">= baseline_accuracy + 0.1 (= 0.6)"


def test_read_never_crashes_on_a_criterion_that_skipped_frame():
    result, checks = evaluate(["accuracy >= 0.9.5", "accuracy >= 90%"], {"accuracy": 0.95})
    assert result == "INCONCLUSIVE" and [c.result for c in checks] == ["INVALID", "INVALID"]


def test_dotted_names_nested_or_literal():
    assert evaluate(["a.b >= 1", "c.d >= 1"], {"a": {"b": 2}, "c.d": 3})[0] == "CONFIRMED"


def spec_with(tmp_path: Path, criteria: str) -> Path:
    text = TOY.read_text().replace("- [ ] accuracy >= 0.90\n- [ ] baseline_gap >= 0.10\n", criteria)
    path = tmp_path / "experiments" / "exp-009-x.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_frame_names_each_bad_line_and_the_accepted_forms(tmp_path):
    spec = load_spec(spec_with(tmp_path, "- [ ] accuracy >= 0.9.5\n- [ ] baseline_gap >= 10%\n- [ ] ok >= 1\n"))
    problems = spec.problems()
    assert problems[0].startswith("line 20: 'accuracy >= 0.9.5': '0.9.5' is not a number")  # as the editor counts
    assert problems[1].startswith("line 21: 'baseline_gap >= 10%': a unit (%)")
    assert problems[2] == ("accepted forms: `metric op number` or `metric op other_metric [+|- number]`, op one of "
                           ">= <= > < == !=, numbers as metrics.json holds them (0.9, not 90%), nothing after them")
    assert len(problems) == 3 and spec.criteria_errors() == problems


def test_criteria_in_words_are_for_llm_agents_only(tmp_path):
    spec = load_spec(spec_with(tmp_path, "- [ ] accuracy >= 0.9\n- [ ] the decision boundary looks linear\n"))
    assert spec.problems(scripted=False) == []
    assert spec.problems() == ["line 21: 'the decision boundary looks linear' is in words, which the scripted agent "
                               "cannot judge; write it as `metric op number` (or use an LLM agent)"]


def test_an_orchestration_kit_spec_reads_as_it_is():
    spec = load_spec(OKIT)
    assert {"Hypothesis", "Variables", "Controls", "Metrics", "Success Criteria", "Budget", "Full Protocol"} \
        <= set(spec.sections)
    assert [(c.metric, c.other, c.threshold) for c in spec.criteria] == [
        ("cv.brier_skill.gbt", "cv.brier_skill.logreg", 0.02), ("cv.accuracy.gbt", "cv.accuracy.logreg", -0.005),
        ("sanity.label_rate", None, 0.3), ("sanity.label_rate", None, 0.4)]
    assert spec.estimated_hours == 0.5 and spec.budget["max_gpu_hours"] == "2"
    assert spec.run_command == ""
    assert spec.problems(scripted=False) == []  # a protocol in prose: fine for an LLM agent
    assert spec.problems() == [f"missing {NEEDS_RUN}"]  # the scripted agent needs the one section
    metrics = {"cv": {"brier_skill": {"gbt": 0.07, "logreg": 0.04}, "accuracy": {"gbt": 0.71, "logreg": 0.712}},
               "sanity": {"label_rate": 0.33}}
    assert evaluate(spec.criteria, metrics)[0] == "CONFIRMED"


def test_a_budget_that_is_not_a_number_is_a_frame_error(tmp_path):
    spec = parse_spec(OKIT.read_text().replace("- Max GPU-hours: 2", "- Max GPU-hours: _N_"), tmp_path / "e.md")
    assert "max_gpu_hours under '## Budget' must be a number of hours, not '_N_'" in spec.problems(scripted=False)


@pytest.mark.parametrize("heading,section", [
    ("## Success Criteria (immutable once RUN begins)", "Success Criteria"),
    ("## Metrics (ALL must be reported)", "Metrics"),
    ("## Independent Variables", "Variables"),
    ("## Resource Budget", "Budget"),
])
def test_heading_variants(tmp_path, heading, section):
    assert section in parse_spec(f"# t\n\n{heading}\nbody\n", tmp_path / "e.md").sections


def test_run_refuses_a_spec_whose_criteria_never_parse(tmp_path):
    spec = spec_with(tmp_path, "- [ ] accuracy >= 90%\n")
    r = subprocess.run([sys.executable, "-m", "researchkit_py.experiment.cli", "begin", "run", "--spec", str(spec)],
                       cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "EXP_AGENT": "scripted"})
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"experiment.sh: {spec}: line 20: 'accuracy >= 90%': a unit (%)")
    assert not (tmp_path / "results").exists()


# --- what FRAME and RUN read from a spec, line by line ---------------------------------------
SPEC = """# Exp 7: a title
## Hypothesis
h
## Variables
v
## Controls
c
## Metrics
m
## Success Criteria
- [ ] accuracy >= 0.9
- [x] loss <= 0.2
## Run
```bash
python train.py --out "$RESULTS_DIR"
```
### Notes
```bash
python other.py
```
### Compute Profile
```yaml
estimated_wall_hours: 2
```
"""


def test_a_spec_read_as_frame_and_run_read_it(tmp_path):
    path = tmp_path / "exp-007.md"
    path.write_text(SPEC)
    spec = load_spec(path)
    assert spec.title == "Exp 7: a title" and "Hypothesis" in spec.sections and spec.sections["Hypothesis"] == "h"
    assert spec.run_command == 'python train.py --out "$RESULTS_DIR"'  # the first block, not a later ### one's
    assert [(c.line, c.text) for c in spec.criteria] == [(11, "accuracy >= 0.9"), (12, "loss <= 0.2")]  # as the editor counts
    assert spec.estimated_hours == 2.0 and spec.problems() == []
    from researchkit_py.experiment.spec import spec_command

    assert spec_command(str(path)) == 'python train.py --out "$RESULTS_DIR"'
    path.write_text(SPEC.replace("# Exp 7: a title\n", ""))
    assert load_spec(path).title == "exp-007"  # no title: the file's name


@pytest.mark.parametrize(("change", "problem"), [
    (("estimated_wall_hours: 2", "estimated_wall_hours: soon"), "missing estimated_wall_hours (a number) in the compute profile"),
    (("estimated_wall_hours: 2", "estimated_wall_hours: [2]"), "missing estimated_wall_hours (a number) in the compute profile"),
    (("estimated_wall_hours: 2", "a: [1\nb: 2"), "missing valid YAML in the compute profile (line 2 of the block)"),
    (("### Compute Profile", "### Profile"), "missing a '### Compute Profile' section"),
    (("- [ ] accuracy >= 0.9\n- [x] loss <= 0.2\n", "words\n"),
     "missing criteria as '- [ ] metric >= value' lines under '## Success Criteria'"),
])
def test_what_frame_reports_missing(tmp_path, change, problem):
    path = tmp_path / "e.md"
    path.write_text(SPEC.replace(*change))
    assert load_spec(path).problems() == [problem]


def test_a_spec_that_cannot_be_read_or_run_says_why(tmp_path):
    from researchkit_py.errors import KitError, UsageError
    from researchkit_py.experiment.spec import spec_command

    with pytest.raises(KitError, match=r"^spec .*nope.md not found; specs live in experiments/ \(copy templates"):
        load_spec(tmp_path / "nope.md")
    (tmp_path / "folder").mkdir()
    with pytest.raises(KitError, match=r"^spec .*folder not found$"):  # there, but not a file
        load_spec(tmp_path / "folder")
    (tmp_path / "latin1.md").write_bytes("# caf\xe9\n".encode("latin-1"))
    with pytest.raises(KitError, match=r"^cannot read spec .*latin1.md: UnicodeDecodeError$"):
        load_spec(tmp_path / "latin1.md")
    with pytest.raises(UsageError, match=r"^run needs a command"):
        spec_command("")
    (tmp_path / "norun.md").write_text(SPEC.replace("## Run", "## Procedure"))
    with pytest.raises(UsageError, match=r"norun.md has no command in a ``` block under '## Run'"):
        spec_command(str(tmp_path / "norun.md"))


def test_the_run_command_is_the_first_shell_block_and_criteria_lines_count_blank_lines(tmp_path):
    path = tmp_path / "e.md"
    path.write_text(SPEC.replace('## Run\n```bash\n', '## Run\n```text\nexample output\n```\n```bash\n')
                    .replace("## Success Criteria\n", "## Success Criteria\n\n"))
    spec = load_spec(path)
    assert spec.run_command == 'python train.py --out "$RESULTS_DIR"'  # after the example output's block
    assert [c.line for c in spec.criteria] == [12, 13]
