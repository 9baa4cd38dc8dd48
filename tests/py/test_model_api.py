"""The real `claude` and `codex` CLIs (pinned in tests/agents/package-lock.json) driven by the
scripted model API of model_api.py. Each test checks a behaviour recorded in
tests/agents/FACTS.md; the first ones check the server's own helpers and need no CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from model_api import AGENT_BIN as BIN
from model_api import (
    CLAUDE_QUIET_ENV,
    CODE_MODE_SHELL,
    BrokenStream,
    EditFile,
    Hang,
    ModelAPI,
    ReadFile,
    Say,
    Shell,
    ToolCall,
    WriteFile,
    block_after,
    claude_env,
    codex_config,
    codex_env,
    make_codex_home,
    parse_anthropic,
    parse_openai,
    pinned_versions,
    run_block_after,
    script,
)

# The CLIs (model_api looks them up at import); conftest's agent_bin skips without them, or
# fails under CI=true.
needs_clis = pytest.mark.usefixtures("agent_bin")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (Debian: strace)")

DIRECTIVE = "Use cloud-run to execute the experiment:"
PROMPT = f"""# RUN phase
## Compute Directive (MANDATORY — SANDBOX)

{DIRECTIVE}
  ./tools/cloud-run run "python train.py --epochs 2" \\
      --backend local \\
      --output-dir results/exp-001/ \\
      --max-hours 1

IMPORTANT:
- Do NOT use --detach.
"""
# A stand-in for tools/cloud-run that records the argv it got, one argument a line.
FAKE_CLOUD_RUN = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > cloud-run.argv\necho "cloud-run: run finished"\n'
CLAUDE_HOOK_KEYS = {"session_id", "transcript_path", "cwd", "permission_mode", "hook_event_name", "tool_name",
                    "tool_input", "tool_use_id"}


# ---------------------------------------------------------------------------------------------
# The server's helpers (no CLI needed).


def test_block_after_keeps_the_command_exactly_as_written():
    cmd = block_after(PROMPT, DIRECTIVE)
    assert cmd.splitlines()[0] == './tools/cloud-run run "python train.py --epochs 2" \\'
    assert cmd.endswith("--max-hours 1") and cmd.count("\\\n") == 3
    fenced = "Run this:\n```bash\necho a \\\n  b\n```\nafter"
    assert block_after(fenced, "Run this:") == "echo a \\\n  b"
    with pytest.raises(LookupError):
        block_after("nothing here", DIRECTIVE)


def test_script_steps_follow_the_conversation_not_the_request_count():
    play = script(Shell("one"), Shell("two"), final="bye")
    first = parse_anthropic({"messages": [{"role": "user", "content": "go"}]})
    again = parse_anthropic({"messages": [{"role": "user", "content": "go"}]})  # a retry
    later = parse_anthropic({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "out"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": [
            {"type": "text", "text": "boom"}], "is_error": True}]},
    ]})
    assert play(first) == play(again) == Shell("one")
    assert play(later) == Say("bye")
    assert later.last_result is not None and later.last_result.output == "boom" and later.last_result.is_error


def test_openai_waits_added_by_the_server_are_not_playbook_steps():
    turn = parse_openai({"input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "custom_tool_call", "call_id": "call_1", "name": "exec", "input": "..."},
        {"type": "custom_tool_call_output", "call_id": "call_1", "output": "Script running with cell ID 3\n"},
        {"type": "function_call", "call_id": "poll_2", "name": "wait", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "poll_2", "output": [{"type": "input_text", "text": "ok"}]},
    ]})
    assert turn.step == 1 and turn.system.endswith("rules") and turn.user_text == "go"
    assert [r.output for r in turn.tool_results] == ["Script running with cell ID 3\n", "ok"]


def test_the_pinned_versions_are_the_first_of_the_tested_range():
    """agents/clis.py's TESTED and tests/agents/package-lock.json say the same."""
    from researchkit_py.agents.clis import TESTED

    assert {agent: low for agent, (low, _) in TESTED.items()} == pinned_versions()


def test_server_records_requests_without_credentials(tmp_path):
    log = tmp_path / "requests.jsonl"
    with ModelAPI(script(Say("hi")), log_path=log) as api:
        body = json.dumps({"model": "m", "stream": False, "messages": [{"role": "user", "content": "x"}]}).encode()
        req = subprocess.run(["curl", "-s", "-H", "x-api-key: secret", "-H", "content-type: application/json",
                              "--data-binary", "@-", f"{api.url}/v1/messages"], input=body, capture_output=True,
                             timeout=30)
    answer = json.loads(req.stdout)
    assert answer["content"] == [{"type": "text", "text": "hi"}] and answer["stop_reason"] == "end_turn"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged == api.requests and logged[0]["headers"]["x-api-key"] == "<redacted>"
    assert "secret" not in log.read_text()


# ---------------------------------------------------------------------------------------------
# Running the real CLIs.


@dataclass
class Run:
    rc: int | None  # None: still running at the deadline, killed
    stdout: str
    stderr: str
    secs: float

    @property
    def events(self) -> list[dict]:
        out = []
        for line in self.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]


def run_cli(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Run:
    """Run a CLI as experiment.sh does (stdin closed, output captured), in a process group of its
    own: on Node < 22.15 the npm `codex` wrapper spawns the native binary as a child, which
    killing the wrapper alone would leave running."""
    assert BIN is not None
    full_env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": os.environ["HOME"], "LANG": "C.UTF-8",
                "TMPDIR": tempfile.gettempdir(), **env}
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return Run(p.returncode, out, err, time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return Run(None, out, err, time.monotonic() - t0)


def claude_argv(prompt: str, tools: str = "Read,Grep,Glob,Write,Edit,Bash", settings: str | None = None) -> list[str]:
    """claude exactly as experiment.sh's invoke_agent builds it (RUN phase tools by default)."""
    argv = ["claude", "-p", "Carry out the RUN phase exactly as your instructions describe.",
            "--append-system-prompt", prompt, "--output-format", "stream-json", "--verbose", "--allowedTools", tools]
    if settings is not None:
        argv += ["--settings", settings]
    return argv


def first_request_headers(api: ModelAPI) -> dict[str, str]:
    return api.requests[0]["headers"]


def hook_settings(hook: Path | str) -> str:
    """The --settings JSON experiment.sh gives claude (researchkit_py/agents/clis.py), for any hook command."""
    from researchkit_py.agents.clis import GUARDED_TOOLS

    matcher = GUARDED_TOOLS["claude"]
    return json.dumps({"hooks": {"PreToolUse": [{"matcher": matcher, "hooks": [{"type": "command",
                                                                                  "command": str(hook)}]}]}})


@pytest.fixture
def workdir(tmp_path) -> Path:
    d = tmp_path / "work"
    (d / "tools").mkdir(parents=True)
    tool = d / "tools" / "cloud-run"
    tool.write_text(FAKE_CLOUD_RUN)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return d


# ---------------------------------------------------------------------------------------------
# claude


@needs_clis
def test_versions_are_the_pinned_ones(tmp_path):
    versions = pinned_versions()
    claude = run_cli(["claude", "--version"], tmp_path, CLAUDE_QUIET_ENV, 60)
    codex = run_cli(["codex", "--version"], tmp_path, {}, 60)
    assert claude.rc == 0 and claude.stdout.strip() == f"{versions['claude']} (Claude Code)"
    assert codex.rc == 0 and codex.stdout.strip() == f"codex-cli {versions['codex']}"


@needs_clis
def test_claude_pastes_the_directive_into_bash_and_the_result_comes_back(workdir):
    with ModelAPI(script(run_block_after(DIRECTIVE), final="RUN finished")) as api:
        run = run_cli(claude_argv(PROMPT), workdir, claude_env(api.url), 120)
    assert run.rc == 0, run.stderr
    # The command ran exactly as written: backslash-newlines joined, quotes honoured.
    assert (workdir / "cloud-run.argv").read_text().splitlines() == [
        "run", "python train.py --epochs 2", "--backend", "local", "--output-dir", "results/exp-001/",
        "--max-hours", "1"]
    first = api.turns[0]
    assert DIRECTIVE in first.system and DIRECTIVE not in first.user_text  # --append-system-prompt → `system`
    assert "Carry out the RUN phase" in first.user_text and first.body["stream"] is True
    result = api.tool_results()[-1]
    assert "cloud-run: run finished" in result.output and not result.is_error
    assert {r["path"] for r in api.requests} == {"/v1/messages?beta=true"}  # nothing else, no /api/hello
    assert first_request_headers(api)["x-api-key"] == "<redacted>" and "authorization" not in first_request_headers(api)
    # stream-json on stdout: init, the tool_use, its tool_result, the final answer, the result.
    kinds = [(e["type"], e.get("subtype")) for e in run.events]
    assert kinds[0] == ("system", "init") and kinds[-1] == ("result", "success")
    tool_use = [c for e in run.of_type("assistant") for c in e["message"]["content"] if c["type"] == "tool_use"]
    assert tool_use[0]["name"] == "Bash" and tool_use[0]["input"]["command"] == block_after(PROMPT, DIRECTIVE)
    final = run.of_type("result")[0]
    assert final["result"] == "RUN finished" and final["is_error"] is False


@needs_clis
def test_claude_hook_fires_follows_cd_and_exit_2_blocks_an_edit(workdir, tmp_path):
    log = tmp_path / "hook.log"
    hook = tmp_path / "hook"
    # Logs each payload (one JSON a line); refuses every Edit with exit 2 and a reason on stderr.
    hook.write_text('#!/usr/bin/env bash\npayload="$(cat)"\nprintf "%s\\n" "$payload" >> "$HOOK_LOG"\n'
                    'if [[ "$payload" == *\'"tool_name":"Edit"\'* ]]; then echo "locked by the test hook" >&2; '
                    "exit 2; fi\nexit 0\n")
    hook.chmod(0o755)
    locked = workdir / "spec.md"
    locked.write_text("metric: accuracy\n")
    (workdir / "sub").mkdir()
    play = script(Shell("cd sub && pwd"), Shell("pwd"), ReadFile(str(locked)),
                  EditFile(str(locked), "accuracy", "loss"), WriteFile("relative.md", "x\n"), final="done")
    with ModelAPI(play) as api:
        run = run_cli(claude_argv(PROMPT, settings=hook_settings(hook)), workdir,
                      {**claude_env(api.url), "HOOK_LOG": str(log)}, 120)
    assert run.rc == 0, run.stderr
    payloads = [json.loads(line) for line in log.read_text().splitlines()]
    assert [p["tool_name"] for p in payloads] == ["Bash", "Bash", "Edit", "Write"]  # Read is not in the matcher
    assert all(CLAUDE_HOOK_KEYS <= set(p) for p in payloads)
    assert payloads[0]["cwd"] == str(workdir) and payloads[1]["cwd"] == str(workdir / "sub")  # follows the cd
    assert payloads[2]["tool_input"]["file_path"] == str(locked) and payloads[2]["hook_event_name"] == "PreToolUse"
    # A relative path is resolved against the shell's cwd, and the hook is given it absolute.
    assert payloads[3]["tool_input"]["file_path"] == str(workdir / "sub" / "relative.md")
    assert (workdir / "sub" / "relative.md").read_text() == "x\n"
    assert locked.read_text() == "metric: accuracy\n"
    results = api.tool_results()
    assert results[1].output == str(workdir / "sub")  # the shell's cwd persists between Bash calls
    blocked = results[3]
    assert blocked.is_error and blocked.output.startswith("PreToolUse:Edit hook error") and "locked by the test hook" in blocked.output


@needs_clis
def test_claude_edit_of_an_unread_file_outside_the_working_dir_fails_before_any_hook(workdir, tmp_path):
    log = tmp_path / "hook.log"
    hook = tmp_path / "hook"
    hook.write_text('#!/usr/bin/env bash\ncat >> "$HOOK_LOG"; echo >> "$HOOK_LOG"\n')
    hook.chmod(0o755)
    inside = workdir / "notes.md"
    inside.write_text("a\n")
    outside = Path(make_outside_dir())
    try:
        (outside / "notes.md").write_text("a\n")
        with ModelAPI(script(EditFile(str(inside), "a", "b"), EditFile(str(outside / "notes.md"), "a", "b"))) as api:
            run = run_cli(claude_argv(PROMPT, settings=hook_settings(hook)), workdir,
                          {**claude_env(api.url), "HOOK_LOG": str(log)}, 120)
        assert run.rc == 0, run.stderr
        edited, refused = api.tool_results()
        assert not edited.is_error and inside.read_text() == "b\n"  # in the working dir: no Read needed
        assert refused.is_error and "File has not been read yet" in refused.output
        assert (outside / "notes.md").read_text() == "a\n"
        assert [json.loads(line)["tool_input"]["file_path"] for line in log.read_text().split()] == [str(inside)]
    finally:
        shutil.rmtree(outside, ignore_errors=True)


@needs_clis
def test_claude_kit_guard_blocks_edits_and_shell_writes_to_locked_paths(workdir):
    """The kit's own hook (tools/guard-hook) in the settings experiment.sh gives claude."""
    from researchkit_py.agents.clis import guard_hook

    spec = workdir / "spec.md"
    spec.write_text("metric: accuracy\n")
    settings = json.dumps({"hooks": {"PreToolUse": [guard_hook("claude", [spec])]}})
    play = script(ReadFile(str(spec)), EditFile(str(spec), "accuracy", "loss"), Shell("sed -i s/accuracy/loss/ spec.md"),
                  WriteFile(str(workdir / "analysis.md"), "## Verdict: CONFIRMED\n"))
    with ModelAPI(play) as api:
        run = run_cli(claude_argv(PROMPT, settings=settings), workdir, claude_env(api.url), 120)
    assert run.rc == 0, run.stderr
    results = api.tool_results()
    assert results[1].is_error and "locked during this phase" in results[1].output
    assert results[2].is_error and results[2].output.startswith("PreToolUse:Bash hook error")
    assert not results[3].is_error and (workdir / "analysis.md").read_text() == "## Verdict: CONFIRMED\n"
    assert spec.read_text() == "metric: accuracy\n"


@needs_clis
def test_claude_bash_commands_stop_at_bash_default_timeout_ms(workdir):
    """Without a `timeout` from the model, a Bash command is stopped after BASH_DEFAULT_TIMEOUT_MS
    (documented default: 2 minutes), so experiment.sh sets it to the phase's budget."""
    with ModelAPI(script(Shell("sleep 6; touch finished"))) as api:
        run = run_cli(claude_argv(PROMPT), workdir, {**claude_env(api.url), "BASH_DEFAULT_TIMEOUT_MS": "2000"}, 120)
    assert run.rc == 0, run.stderr
    result = api.tool_results()[0]
    assert result.is_error and result.output == "Exit code 143\nCommand timed out after 2s"
    assert not (workdir / "finished").exists()


@needs_clis
@pytest.mark.parametrize(("flag", "value", "offered", "write_refusal"), [
    ("--tools", "Bash,Read", {"Bash", "Read"}, "No such tool available: Write"),
    ("--disallowedTools", "Write,Edit", None, "No such tool available: Write"),
    ("--allowedTools", "Read,Bash", None, "requested permissions to write"),
])
def test_claude_which_flag_restricts_the_tools_offered(workdir, flag, value, offered, write_refusal):
    target = workdir / "out.txt"
    with ModelAPI(script(WriteFile(str(target), "x\n"))) as api:
        argv = ["claude", "-p", "go", "--output-format", "stream-json", "--verbose", flag, value]
        run = run_cli(argv, workdir, claude_env(api.url), 120)
    assert run.rc == 0, run.stderr
    tools = set(api.turns[0].tools) - {"DeferredToolPlaceholder"}  # a placeholder 2.1.330 always sends
    if offered is not None:
        assert tools == offered
    elif flag == "--disallowedTools":
        assert "Write" not in tools and "Edit" not in tools and "Bash" in tools
    else:  # --allowedTools only pre-approves: every default tool is still offered
        assert {"Write", "Edit", "Bash", "Read"} <= tools
    result = api.tool_results()[0]
    assert result.is_error and write_refusal in result.output and not target.exists()


@needs_clis
def test_claude_gives_up_on_a_silent_server_only_with_a_timeout_set(workdir):
    with ModelAPI(lambda turn: Hang()) as api:
        waited = run_cli(claude_argv(PROMPT), workdir, claude_env(api.url), 5)
        assert waited.rc is None and len(api.requests) == 1  # no answer in 5 s: still waiting
        assert api.requests[0]["headers"]["x-stainless-timeout"] == "600"  # its default: 600 s a request
        gave_up = run_cli(claude_argv(PROMPT), workdir, claude_env(api.url, request_timeout_s=2, max_retries=1), 60)
    assert gave_up.rc == 1 and gave_up.secs < 30
    retries = [e for e in gave_up.of_type("system") if e.get("subtype") == "api_retry"]
    assert len(retries) == 1 and retries[0]["max_retries"] == 1
    assert gave_up.of_type("result")[-1]["is_error"] is True


@needs_clis
def test_claude_asks_to_resume_a_stream_cut_before_message_stop(workdir):
    """Where a lax fake would differ from the real thing: a stream without message_delta and
    message_stop is not a complete answer to claude."""
    with ModelAPI(lambda turn: BrokenStream(Say("partial"))) as api:
        run = run_cli(claude_argv(PROMPT), workdir, claude_env(api.url, max_retries=1), 120)
    assert run.rc == 1
    # 3 continuations, whatever CLAUDE_CODE_MAX_RETRIES says, then it gives up.
    assert len(api.turns) == 4 and all("cut off mid-stream" in t.user_text for t in api.turns[1:])
    assert run.of_type("result")[-1]["is_error"] is True


@needs_clis
@pytest.mark.skipif(not os.environ.get("RK_SLOW_AGENT_TESTS"), reason="takes 5 min: set RK_SLOW_AGENT_TESTS=1")
def test_claude_falls_back_to_a_plain_request_after_a_stream_stalls_300_s(workdir):
    def play(turn):
        return Hang(headers=True) if turn.body.get("stream") else Say("answered without streaming")

    with ModelAPI(play) as api:
        run = run_cli(claude_argv(PROMPT), workdir, {**claude_env(api.url, max_retries=0),
                                                      "CLAUDE_STREAM_IDLE_TIMEOUT_MS": "10000"}, 420)
    assert run.rc == 0 and 295 < run.secs < 400  # the idle timeout has a floor of 300 s
    assert [r["body"]["stream"] for r in api.requests] == [True, False]
    assert api.requests[1]["headers"]["x-stainless-timeout"] == "300"
    assert run.of_type("result")[-1]["result"] == "answered without streaming"


@needs_clis
@needs_strace
def test_claude_talks_to_nothing_but_the_local_server(workdir, tmp_path):
    trace = tmp_path / "strace.txt"
    with ModelAPI(script(Shell("true"))) as api:
        run = run_cli(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *claude_argv(PROMPT)],
                      workdir, claude_env(api.url), 120)
    assert run.rc == 0, run.stderr
    assert outside_connections(trace) == []


def outside_connections(trace: Path) -> list[str]:
    """strace's connect() calls to an internet address other than loopback (DNS included)."""
    return [line for line in trace.read_text().splitlines()
            if "connect(" in line and ("AF_INET" in line or "AF_INET6" in line)
            and 'inet_addr("127.0.0.1")' not in line and '"::1"' not in line]


# ---------------------------------------------------------------------------------------------
# codex


@pytest.fixture
def codex_home():
    homes: list[Path] = []

    def make(api: ModelAPI, **config) -> dict[str, str]:
        home = make_codex_home(api.url, **config)
        homes.append(home)
        return codex_env(home)

    yield make
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)


def codex_argv(prompt: str, workdir: Path, *extra: str, sandbox: str = "workspace-write") -> list[str]:
    return ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", sandbox, "--cd", str(workdir),
            *extra, prompt]


@needs_clis
def test_codex_runs_the_directive_and_the_result_comes_back(workdir, tmp_path, codex_home):
    with ModelAPI(script(run_block_after(DIRECTIVE), final="RUN finished")) as api:
        run = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_home(api), 120)  # --cd, not the cwd, rules
    assert run.rc == 0, run.stderr
    assert (workdir / "cloud-run.argv").read_text().splitlines()[:2] == ["run", "python train.py --epochs 2"]
    first = api.turns[0]
    assert DIRECTIVE in first.user_text and first.body["stream"] is True and api.posts("/v1/responses")
    assert first_request_headers(api)["authorization"] == "<redacted>"  # Bearer $RK_MODEL_API_KEY
    assert {(r["method"], r["path"]) for r in api.requests} == {("POST", "/v1/responses")}  # no /models
    assert "exec" in first.tools and "wait" in first.tools  # the default model works in code mode
    assert "cloud-run: run finished" in api.tool_results()[-1].output
    # --json events, in order, with their exact shapes.
    kinds = [e["type"] for e in run.events]
    assert kinds == ["thread.started", "turn.started", "item.started", "item.completed", "item.completed",
                     "turn.completed"]
    started, done, message = run.events[2]["item"], run.events[3]["item"], run.events[4]["item"]
    assert set(run.events[0]) == {"type", "thread_id"}
    assert started["type"] == done["type"] == "command_execution" and started["status"] == "in_progress"
    assert set(done) == {"id", "type", "command", "aggregated_output", "exit_code", "status"}
    assert done["command"].startswith("/bin/bash -lc ") and done["exit_code"] == 0 and done["status"] == "completed"
    assert "cloud-run: run finished" in done["aggregated_output"]
    assert message == {"id": message["id"], "type": "agent_message", "text": "RUN finished"}
    assert {"input_tokens", "cached_input_tokens", "output_tokens"} <= set(run.events[-1]["usage"])


@needs_clis
@pytest.mark.parametrize("network", ["config", "flag", "off"])
def test_codex_workspace_write_sandbox(workdir, tmp_path, codex_home, network):
    outside = Path(make_outside_dir())
    flag = ("-c", "sandbox_workspace_write.network_access=true") if network == "flag" else ()
    try:
        with ModelAPI() as api:
            fetch = f"import urllib.request; print('net', urllib.request.urlopen('{api.url}/v1/models').status)"
            api.playbook = script(Shell(f'touch inside.txt; touch {outside}/outside.txt; python3 -c "{fetch}" 2>&1 | tail -n 1'))
            run = run_cli(codex_argv(PROMPT, workdir, *flag), tmp_path, codex_home(api, network=network == "config"),
                          120)
        assert run.rc == 0, run.stderr
        out = api.tool_results()[-1].output
        assert (workdir / "inside.txt").exists() and not (outside / "outside.txt").exists()
        assert "outside.txt': Read-only file system" in out
        assert ("net 200" in out) == (network != "off") and ("Operation not permitted" in out) == (network == "off")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def make_outside_dir() -> str:
    """A directory neither in the workspace nor under /tmp (which workspace-write may write)."""
    return tempfile.mkdtemp(prefix="rk-outside-", dir=os.environ.get("RK_CODEX_HOME_ROOT") or "/var/tmp")


@needs_clis
def test_codex_sandbox_fails_when_codex_home_is_under_the_temp_dir(workdir, tmp_path):
    home = Path(tempfile.mkdtemp(prefix="rk-codex-home-"))  # under $TMPDIR or /tmp
    try:
        with ModelAPI(script(Shell("echo sandboxed"))) as api:
            (home / "config.toml").write_text(codex_config(api.url))
            run = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_env(home), 120)
        assert run.rc == 0 and "Refusing to create helper binaries under temporary dir" in run.stderr
        assert "bwrap: execvp codex-linux-sandbox: No such file or directory" in api.tool_results()[-1].output
    finally:
        shutil.rmtree(home, ignore_errors=True)


@needs_clis
def test_codex_writes_and_edits_files_with_apply_patch(workdir, tmp_path, codex_home):
    play = script(WriteFile("analysis.md", "## Verdict: PENDING\nnotes\n"),
                  EditFile("analysis.md", "## Verdict: PENDING", "## Verdict: CONFIRMED"))
    with ModelAPI(play) as api:
        run = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_home(api), 120)
    assert run.rc == 0, run.stderr
    assert (workdir / "analysis.md").read_text() == "## Verdict: CONFIRMED\nnotes\n"
    changes = [e["item"] for e in run.of_type("item.completed") if e["item"]["type"] == "file_change"]
    assert [c["changes"] for c in changes] == [[{"path": str(workdir / "analysis.md"), "kind": "add"}],
                                                [{"path": str(workdir / "analysis.md"), "kind": "update"}]]
    assert all(c["status"] == "completed" for c in changes)


@needs_clis
def test_codex_unknown_model_gets_the_classic_tools(workdir, tmp_path, codex_home):
    with ModelAPI(script(Shell("echo classic"))) as api:
        run = run_cli(codex_argv(PROMPT, workdir, "-m", "scripted-model"), tmp_path, codex_home(api), 120)
    assert run.rc == 0, run.stderr
    assert {"exec_command", "write_stdin"} <= set(api.turns[0].tools) and "exec" not in api.turns[0].tools
    assert api.turns[0].body["model"] == "scripted-model"
    warning = run.of_type("item.completed")[0]["item"]
    assert warning["type"] == "error" and "Model metadata for `scripted-model` not found" in warning["message"]
    assert "Process exited with code 0" in api.tool_results()[-1].output


@needs_clis
@pytest.mark.parametrize("model", ["default", "scripted-model"])
def test_codex_commands_still_running_are_waited_for(workdir, tmp_path, codex_home, model):
    """A command outlasting codex's yield comes back 'running'; the server waits for it."""
    cmd = "sleep 3; echo late-output"
    if model == "default":  # code mode: a 1 s yield for the exec cell
        step = ToolCall("exec", '// @exec: {"yield_time_ms": 1000}\n' + CODE_MODE_SHELL % json.dumps(cmd), custom=True)
        extra: tuple[str, ...] = ()
    else:
        step = ToolCall("exec_command", {"cmd": cmd, "yield_time_ms": 1000})
        extra = ("-m", model)
    with ModelAPI(script(step)) as api:
        run = run_cli(codex_argv(PROMPT, workdir, *extra), tmp_path, codex_home(api), 120)
    assert run.rc == 0, run.stderr
    outputs = [r.output for r in api.tool_results()]
    assert re.search(r"Script running with cell ID|Process running with session ID", outputs[0])
    assert "late-output" in outputs[-1] and len(api.turns) == 3


@needs_clis
def test_codex_rejects_a_stream_without_response_completed(workdir, tmp_path, codex_home):
    """Where a lax fake would differ from the real thing: output items alone are no answer."""
    with ModelAPI(lambda turn: BrokenStream(Say("partial"))) as api:
        run = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_home(api, retries=1), 120)
    assert run.rc == 1 and len(api.turns) == 2  # one retry
    failed = run.of_type("turn.failed")[0]
    assert failed["error"]["message"] == "stream disconnected before completion: stream closed before response.completed"


@needs_clis
def test_codex_idle_timeout_covers_a_stalled_stream_but_not_a_silent_server(workdir, tmp_path, codex_home):
    with ModelAPI(lambda turn: Hang(headers=True)) as api:
        stalled = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_home(api, idle_timeout_s=2), 60)
    assert stalled.rc == 1
    assert stalled.of_type("turn.failed")[0]["error"]["message"].endswith("idle timeout waiting for SSE")
    with ModelAPI(lambda turn: Hang()) as api:
        silent = run_cli(codex_argv(PROMPT, workdir), tmp_path, codex_home(api, idle_timeout_s=2), 5)
    assert silent.rc is None and len(api.requests) == 1  # no response headers: codex waits on


@needs_clis
@pytest.mark.parametrize("trust", ["bypassed", "not bypassed"])
def test_codex_runs_pretooluse_hooks_given_as_flags_only_with_hook_trust_bypassed(workdir, tmp_path, codex_home,
                                                                                  trust):
    """codex 0.169 has Claude's hook protocol: PreToolUse for its shell (tool_name Bash) and for
    apply_patch (the patch in tool_input.command); exit 2 blocks, stderr is the reason. Hooks
    given with -c run only with --dangerously-bypass-hook-trust; without it, silently none. Its
    shell does not keep a `cd` from one command to the next."""
    from researchkit_py.agents.clis import guard_hook, inline_toml

    spec = workdir / "spec.md"
    spec.write_text("metric: accuracy\n")
    (workdir / "sub").mkdir()
    hook = ["-c", f"hooks.PreToolUse=[{inline_toml(guard_hook('codex', [spec]))}]"]
    if trust == "bypassed":
        hook.append("--dangerously-bypass-hook-trust")
    play = script(Shell("cd sub && pwd"), Shell("pwd"), Shell("cd sub && echo x > ../spec.md"),
                  EditFile(str(spec), "metric: accuracy", "metric: loss"))
    with ModelAPI(play) as api:
        run = run_cli(codex_argv(PROMPT, workdir, *hook), tmp_path, codex_home(api), 120)
    assert run.rc == 0, run.stderr
    outputs = [r.output for r in api.tool_results()]
    assert str(workdir / "sub") in outputs[0] and str(workdir / "sub") not in outputs[1]
    if trust == "bypassed":
        assert all("Command blocked by PreToolUse hook: " in o and "locked during this phase" in o for o in outputs[2:])
        assert spec.read_text() == "metric: accuracy\n"
    else:
        assert not any("blocked" in o for o in outputs) and spec.read_text() == "x\n"


@needs_clis
def test_codex_strict_config_accepts_every_key_we_write(workdir, tmp_path, codex_home):
    with ModelAPI(script()) as api:
        env = codex_home(api)
        ok = run_cli(codex_argv("hello", workdir, "--strict-config"), tmp_path, env, 120)
        config = Path(env["CODEX_HOME"]) / "config.toml"
        config.write_text(config.read_text() + "bogus_key = 1\n")
        bad = run_cli(codex_argv("hello", workdir, "--strict-config"), tmp_path, env, 120)
    assert ok.rc == 0, ok.stderr
    assert bad.rc == 1 and "unknown configuration field `model_providers.scripted.bogus_key`" in bad.stderr


@needs_clis
def test_codex_full_auto_flag_is_gone(tmp_path):
    run = run_cli(["codex", "exec", "--full-auto", "hello"], tmp_path, {}, 60)
    assert run.rc == 2 and "unexpected argument '--full-auto' found" in run.stderr


@needs_clis
@needs_strace
def test_codex_talks_to_nothing_but_the_local_server(workdir, tmp_path, codex_home):
    trace = tmp_path / "strace.txt"
    with ModelAPI(script(Shell("true"))) as api:
        run = run_cli(["strace", "-f", "-qq", "-e", "trace=connect,execve", "-o", str(trace),
                       *codex_argv(PROMPT, workdir)], tmp_path, codex_home(api), 120)
    assert run.rc == 0, run.stderr
    assert outside_connections(trace) == []
    assert not [line for line in trace.read_text().splitlines() if 'execve("/usr/bin/git"' in line]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
