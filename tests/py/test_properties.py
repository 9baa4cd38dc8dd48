"""Property-based tests of the command-line tools: generated specs, keys, paths and options.

Whatever they are given, cloud-run, artifact-store, preflight, the detached CLI and
experiment.sh's Python half exit 0, or exit non-zero with exactly one line on stderr (their
name, the problem, the fix) and no traceback; and nothing is written outside the directory
the command may write to. The CLIs run in-process through errors.run_cli, as their entry
points do. CI (CI set) uses the `ci` profile: derandomized, so a failure reproduces; anywhere
else the `dev` profile draws new examples each run. The module takes about 15 s on 2 cores (100 examples a test).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from finished_run import finished_run, local_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from researchkit_py import artifacts, cloudrun, detached, preflight
from researchkit_py.errors import run_cli
from researchkit_py.experiment import cli as experiment_cli

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy"

_common = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, derandomize=True, **_common)
settings.register_profile("dev", max_examples=100, **_common)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

TOOLS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "cloud-run": ("cloud-run", cloudrun.main), "artifact-store": ("artifact-store", artifacts.main),
    "preflight": ("preflight", preflight.main), "detached": ("detached", detached.main),
    "experiment": ("experiment.sh", experiment_cli.main)}


class Example:
    """A fresh directory per example: proj/ (the cwd, a copy of the toy project) and the rest."""

    def __init__(self, base: Path, monkeypatch):
        self.dir = Path(tempfile.mkdtemp(dir=base))
        self.proj = self.dir / "proj"
        shutil.copytree(TOY, self.proj)
        (self.proj / ".orchestration-kit.env").unlink()
        (self.proj / "results").mkdir()
        monkeypatch.chdir(self.proj)
        monkeypatch.setenv("EXP_PROJECT_ROOT", str(self.proj))

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for root, dirs, files in os.walk(self.dir):
            for name in dirs + files:
                p = Path(root, name)
                st_ = p.lstat()
                # a directory is unchanged while it exists (what is made inside it changes its mtime)
                out[str(p.relative_to(self.dir))] = ("dir",) if p.is_dir() and not p.is_symlink() else \
                    (st_.st_mode, st_.st_size, st_.st_mtime_ns)
        return out

    def run(self, tool: str, argv: list[str], may_write: tuple[str, ...]) -> tuple[int, str]:
        """Run a tool; check the exit code, stderr and what changed outside `may_write` (paths
        relative to this example's directory)."""
        prog, main = TOOLS[tool]
        before = self.snapshot()
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            run_cli(prog, main, argv)
        code = e.value.code or 0
        after = self.snapshot()
        changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
        escaped = sorted(p for p in changed if not any(_under(p, allowed) for allowed in may_write))
        assert not escaped, f"{tool} {argv!r} wrote outside {may_write}: {escaped}"
        text = err.getvalue()
        assert "Traceback" not in text, text
        if code != 0:
            lines = [line for line in text.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), (argv, code, text)
            assert code in (1, 2, 124, 125) or tool == "cloud-run", (argv, code)
        return code, text


def _under(path: str, allowed: str) -> bool:
    """Is `path` (relative to the example's directory) `allowed` or inside it ('.': anywhere)?"""
    allowed = os.path.normpath(allowed)
    return allowed == "." or path == allowed or path.startswith(allowed + "/")


@pytest.fixture
def example(tmp_path, monkeypatch):
    yield lambda: Example(tmp_path, monkeypatch)
    for d in tmp_path.iterdir():  # hundreds of example directories, some of them deep
        shutil.rmtree(d, ignore_errors=True)


# --- strategies ---------------------------------------------------------------------------
NAME = st.text("abcxyz_.-", min_size=1, max_size=12)
ODD = st.sampled_from(["", ".", "..", "../x", "/etc/rk-prop", "a/../../b", "a//b", "./c", "x\\y", "nul\x00l", "é ü",
                       "\n", "-", "--", "$(touch pwned)", "`id`", "k" * 300, "sub/" + "k" * 256, "a/" * 100, "abcdefghij/" * 400])
# Paths a user names, relative and inside the example's directory: the tools do write where
# they are told (a pull into /etc would be one), and these tests must not write outside.
PATH = st.one_of(ODD, NAME, st.lists(st.one_of(NAME, ODD), min_size=1, max_size=4).map("/".join),
                 st.text(max_size=40)).filter(
    lambda p: not p.lstrip().startswith(("/", "~")) and not os.path.normpath(os.path.join("proj", p)).startswith(".."))
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10, 10 ** 9).map(str),
                   st.sampled_from(["0", "-1", "1e-9", "0.0083", "0.0084", "2880", "2881", "lots", "", "nan", "1,5"]))
WORD = st.one_of(NAME, NUMBER, PATH, st.text(max_size=20))


@given(keys=st.lists(st.one_of(PATH, ODD, NAME), min_size=1, max_size=5), out=st.one_of(st.just("out"), PATH))
def test_pull_of_any_keys_stays_in_its_directory(example, keys, out):
    ex = example()
    store = local_store()
    run_id = finished_run(store, {"ok.txt": b"ok"})
    store.write_json(f"runs/{run_id}/results.manifest.json", {"files": [
        {"path": k, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()} for k in keys]})
    for k in keys:
        with contextlib.suppress(Exception):  # a key the directory bucket cannot hold is simply absent
            store.put_bytes(f"runs/{run_id}/results/{k}", b"x")
    ex.run("cloud-run", ["pull", run_id, "--output-dir", out], may_write=(f"proj/{out}",))


CLOUD_RUN_ARGS = st.one_of(
    st.tuples(st.just("run"), WORD, st.lists(st.sampled_from(
        ["--max-hours", "--output-dir", "--env", "--machine-type", "--max-cost", "--data-dirs", "--spec", "--backend"]),
        max_size=3), st.lists(WORD, min_size=3, max_size=3)).map(
        lambda t: ["run", t[1], "--dry-run", *[x for pair in zip(t[2], t[3], strict=False) for x in pair]]),
    st.tuples(st.sampled_from(["pull", "status", "logs", "terminate"]), WORD).map(list),
    st.lists(WORD, min_size=1, max_size=4))


@given(argv=CLOUD_RUN_ARGS)
def test_cloud_run_with_any_options(example, argv):
    ex = example()
    ex.run("cloud-run", argv, may_write=("proj/results",))


@given(command=st.sampled_from(["push", "push-dir", "hydrate", "status", "verify"]), path=st.one_of(
    st.sampled_from(["train.py", "results", "experiments", ".", "nope"]), PATH), threshold=st.one_of(NUMBER, NAME))
def test_artifact_store_with_any_paths(example, command, path, threshold):
    ex = example()
    (ex.proj / "results" / "big.bin").write_bytes(b"b" * 2048)
    argv = [command, path] + (["--threshold", threshold] if command == "push-dir" else [])
    ex.run("artifact-store", argv, may_write=("proj",))


PROFILE_FIELDS = ["compute_type", "estimated_rows", "model_type", "sequential_fits", "parallelizable", "memory_gb",
                  "gpu_type", "estimated_wall_hours"]
YAML_VALUE = st.one_of(NUMBER, st.sampled_from(["cpu", "gpu", "none", "A100", "true", "no", "[", "{a: 1}", "- x",
                                                "~", "'q'"]), NAME)


@given(profile=st.dictionaries(st.sampled_from(PROFILE_FIELDS), YAML_VALUE),
       options=st.lists(st.sampled_from(["--json", "--max-hours", "--backend", "ec2", "gce", "local", "2"]), max_size=3),
       budget=st.dictionaries(st.sampled_from(["max_gpu_hours", "Max GPU-hours", "max_cost_usd"]), WORD, max_size=2))
def test_preflight_with_any_profile(example, profile, options, budget):
    ex = example()
    spec = ex.proj / "experiments" / "exp-009-gen.md"
    head = (TOY / "experiments" / "exp-001-toy-logreg.md").read_text().split("### Compute Profile")[0]
    spec.write_text(head + "### Compute Profile\n```yaml\n" + "".join(f"{k}: {v}\n" for k, v in profile.items())
                    + "```\n\n## Budget\n" + "".join(f"- {k}: {v}\n" for k, v in budget.items()))
    ex.run("preflight", [str(spec.relative_to(ex.proj)), *options], may_write=())


HEADINGS = st.sampled_from(["Hypothesis", "Variables", "Independent Variables", "Controls", "Metrics",
                            "Metrics (ALL must be reported)", "Success Criteria",
                            "Success Criteria (immutable once RUN begins)", "Run", "Budget", "Resource Budget",
                            "Full Protocol", "", "Run (", "Success Criteria)"])
CRITERION = st.one_of(
    st.tuples(st.sampled_from(["", "**SC-1**: ", "C2: ", "`"]), NAME, st.sampled_from([">=", "<", "==", "≥", "=>", ""]),
              st.one_of(NUMBER, NAME, st.text(max_size=15)), st.sampled_from(["", "%", " over x", " + 0.1", "pp"]))
    .map("".join), st.text(max_size=40))
BODY = st.one_of(st.lists(CRITERION, max_size=3).map(lambda cs: "".join(f"- [ ] {c}\n" for c in cs)),
                 st.sampled_from(["```bash\necho '{}' > \"$RESULTS_DIR/metrics.json\"\n```\n", "```\n", "```yaml\n[\n```\n",
                                  "### Compute Profile\n```yaml\nestimated_wall_hours: 0.01\n```\n",
                                  "- max_gpu_hours: 0.001\n", "- Max GPU-hours: _N_\n"]),
                 st.text(max_size=60))


@given(sections=st.lists(st.tuples(HEADINGS, BODY), max_size=8), phase=st.sampled_from(["frame", "run", "read"]),
       target=st.sampled_from(["", "sandbox", "gce", "nowhere"]))
def test_experiment_sh_begin_with_any_spec(example, monkeypatch, sections, phase, target):
    ex = example()
    spec = ex.proj / "experiments" / "exp-010-gen.md"
    spec.write_text("# gen\n\n" + "".join(f"## {h}\n{b}\n" for h, b in sections))
    monkeypatch.setenv("EXP_AGENT", "scripted")
    monkeypatch.setenv("COMPUTE_TARGET", target)
    code, _ = ex.run("experiment", ["begin", phase, "--spec", "experiments/exp-010-gen.md"],
                     may_write=("proj/.kit-state", "proj/results/exp-010-gen", "proj/experiments/exp-010-gen.md"))
    if code == 0 and phase == "run":
        assert (ex.proj / "results" / "exp-010-gen" / ".run-record.json").is_file()


@given(argv=st.one_of(
    st.tuples(st.just("download"), st.one_of(NUMBER, st.just("1")), st.just("--output-dir"), PATH).map(list),
    st.tuples(st.sampled_from(["list", "status", "logs", "kill"]), WORD).map(list),
    st.lists(st.one_of(st.sampled_from(["--exp", "--dry-run", "--max-hours", "--zone", "--quick", "1"]), WORD),
             min_size=1, max_size=5)))
def test_detached_with_any_options(example, argv):
    ex = example()
    ex.run("detached", argv, may_write=())
