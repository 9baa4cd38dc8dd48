"""A local, scripted model API for driving the real agent CLIs in tests.

One threaded HTTP server on 127.0.0.1 speaks enough of two wire formats:
- the Anthropic Messages API (`POST /v1/messages`, streamed or not, and
  `/v1/messages/count_tokens`) for `claude`, pointed here by `claude_env(url)`;
- the OpenAI Responses API (`POST /v1/responses`, streamed) for `codex exec`, pointed here by
  a model provider of its own in `$CODEX_HOME/config.toml` (`make_codex_home(url)`, `codex_env`).

What the model "says" comes from a playbook: a callable that gets the parsed request as a
`Turn` (system prompt, conversation, tool results so far, tools offered) and returns the next
`Action`: a shell command, a file read, write or edit, any raw tool call, or a final answer.
Actions are neutral: the same playbook drives claude (Bash/Read/Write/Edit tool_use blocks) and
codex (its code-mode `exec` or its classic `exec_command`, and apply_patch). `script(...)`
makes a playbook from a list of steps. Every request is recorded (credentials redacted, JSON
body) in `requests`, and optionally in a JSONL file.

    with ModelAPI(script(run_block_after("Use cloud-run to execute the experiment:"),
                         WriteFile("analysis.md", "## Verdict: CONFIRMED\n"))) as api:
        subprocess.run(["claude", "-p", ...], env={**os.environ, **claude_env(api.url)})
    api.tool_results()  # what came back from the tools

tests/agents/FACTS.md says which behaviour of the real CLIs each part of this was checked against.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import socketserver
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Actions: what the scripted model does next.


@dataclass
class Say:
    """A final text answer: ends the agent's turn (end_turn / a completed response with a message)."""

    text: str


@dataclass
class Shell:
    """Run a shell command: claude's Bash tool, codex's shell tool (whichever flavour it offers).
    `timeout_s` becomes claude's Bash `timeout` (at most 10 min); codex commands are waited for
    to their end (see poll_item)."""

    command: str
    description: str = "scripted command"
    timeout_s: float | None = None


@dataclass
class WriteFile:
    """Create or overwrite a file: claude's Write, codex's apply_patch (Add File)."""

    path: str
    content: str


@dataclass
class EditFile:
    """Replace `old` by `new` in a file: claude's Edit, codex's apply_patch (Update File)."""

    path: str
    old: str
    new: str


@dataclass
class ReadFile:
    """claude's Read (outside the working dir its Edit refuses a file not read first); codex: `cat`."""

    path: str


@dataclass
class ToolCall:
    """A raw tool call, rendered as given: for claude a tool_use, for codex a function_call
    (`input` is JSON-encoded into `arguments`) or, with custom=True, a custom_tool_call."""

    name: str
    input: Any
    custom: bool = False


@dataclass
class Hang:
    """Never answer this request; the connection stays open until the server stops. With
    headers=True, send the 200 and the event-stream headers first, then nothing (a stalled stream)."""

    headers: bool = False


@dataclass
class HttpError:
    """Answer with an HTTP error status and a JSON body in the API's own error shape."""

    status: int
    message: str = "scripted error"


@dataclass
class BrokenStream:
    """Start a streamed answer for `action` and cut it before its final events."""

    action: Any = field(default_factory=lambda: Say("cut short"))


Action = Say | Shell | WriteFile | EditFile | ReadFile | ToolCall | Hang | HttpError | BrokenStream


# ---------------------------------------------------------------------------------------------
# Turns: the parsed request a playbook sees.


@dataclass
class ToolResult:
    call_id: str
    output: str
    is_error: bool = False


@dataclass
class Turn:
    api: str  # "anthropic" or "openai"
    body: dict
    system: str  # anthropic: `system` plus role-"system" messages; openai: `instructions` plus developer messages
    user_text: str  # every user message's text, in order
    tools: list[str]  # names of the tools offered
    tool_results: list[ToolResult]
    step: int  # how many answers the model gave earlier in this conversation

    @property
    def text(self) -> str:
        """Everything the model was told: where a phase prompt is, whichever CLI carried it."""
        return self.system + "\n" + self.user_text

    @property
    def last_result(self) -> ToolResult | None:
        return self.tool_results[-1] if self.tool_results else None


Playbook = Callable[[Turn], Action]


def script(*steps: Action | Callable[[Turn], Action], final: str = "done") -> Playbook:
    """A playbook that answers step i of the conversation with steps[i] (an Action, or a callable
    of the Turn returning one), then `Say(final)`. Steps are counted from the conversation the
    CLI sends, so retries and side requests do not shift them."""

    def play(turn: Turn) -> Action:
        if turn.step < len(steps):
            step = steps[turn.step]
            return step(turn) if callable(step) else step
        return Say(final)

    return play


def block_after(text: str, marker: str) -> str:
    """The command block following a line that ends with `marker`: a ``` fenced block, or the
    indented lines up to the next blank line, dedented and otherwise exactly as written
    (backslash-newline continuations kept)."""
    at = text.find(marker)
    if at < 0:
        raise LookupError(f"no {marker!r} in the prompt")
    rest = text[at + len(marker):].lstrip(" \t").removeprefix("\n")
    fenced = re.match(r"[ \t]*```[^\n]*\n(.*?)\n[ \t]*```", rest, re.S)
    if fenced:
        return textwrap.dedent(fenced.group(1))
    lines = []
    for line in rest.splitlines():
        if not line.strip() or not line[:1].isspace():
            break
        lines.append(line)
    if not lines:
        raise LookupError(f"no command block after {marker!r}")
    return textwrap.dedent("\n".join(lines))


def run_block_after(marker: str) -> Callable[[Turn], Action]:
    """A step: paste the command block after `marker` (in the system prompt or the user's
    message) into the shell exactly as written."""
    return lambda turn: Shell(block_after(turn.text, marker))


# ---------------------------------------------------------------------------------------------
# Parsing requests.


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(c) for c in content)
    if isinstance(content, dict):
        if "text" in content:
            return str(content["text"])
        if "content" in content:
            return _text_of(content["content"])
    return ""


def parse_anthropic(body: dict) -> Turn:
    messages = body.get("messages") or []
    results, users, system_extra = [], [], []
    for m in messages:
        content = m.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for b in blocks:
            if m.get("role") == "user" and b.get("type") == "tool_result":
                results.append(ToolResult(b.get("tool_use_id", ""), _text_of(b.get("content")), bool(b.get("is_error"))))
            elif m.get("role") == "user" and b.get("type") == "text":
                users.append(b.get("text", ""))
            elif m.get("role") == "system":  # claude 2.1 puts its environment section here
                system_extra.append(_text_of(b))
    system = "\n".join([_text_of(body.get("system") or ""), *system_extra])
    return Turn(api="anthropic", body=body, system=system, user_text="\n".join(users),
                tools=[t.get("name", "") for t in body.get("tools") or []], tool_results=results,
                step=sum(m.get("role") == "assistant" for m in messages))


MODEL_ITEMS = {"function_call", "custom_tool_call", "local_shell_call"}
POLL_PREFIX = "poll_"  # call ids of the waits this server adds on its own: not playbook steps


def openai_tools(body: dict) -> dict[str, dict]:
    """Tool name -> spec, from `tools` and from codex's `additional_tools` input items (whose
    tools come in namespaces)."""
    found: dict[str, dict] = {}

    def walk(tools: list) -> None:
        for t in tools or []:
            if t.get("type") == "namespace":
                walk(t.get("tools") or [])
            else:
                found[t.get("name") or t.get("type", "")] = t

    walk(body.get("tools") or [])
    for it in body.get("input") or []:
        if isinstance(it, dict) and it.get("type") == "additional_tools":
            walk(it.get("tools") or [])
    return found


def parse_openai(body: dict) -> Turn:
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    system, users, results, step = [body.get("instructions") or ""], [], [], 0
    for it in items:
        kind = it.get("type", "message")
        if kind == "message" and it.get("role") in ("developer", "system"):
            system.append(_text_of(it.get("content")))
        elif kind == "message" and it.get("role") == "user":
            users.append(_text_of(it.get("content")))
        elif kind == "message" and it.get("role") == "assistant":
            step += 1
        elif kind in MODEL_ITEMS and not str(it.get("call_id", "")).startswith(POLL_PREFIX):
            step += 1
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out = it.get("output")
            results.append(ToolResult(it.get("call_id", ""), out if isinstance(out, str) else _text_of(out)))
    return Turn(api="openai", body=body, system="\n".join(system), user_text="\n".join(users),
                tools=list(openai_tools(body)), tool_results=results, step=step)


# ---------------------------------------------------------------------------------------------
# Rendering actions.

_ids = itertools.count(1)


def _sse(events: Sequence[dict]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def anthropic_tool_use(action: Action) -> tuple[str, dict] | None:
    """(tool name, input) for claude, or None for a text answer."""
    if isinstance(action, Shell):
        args: dict = {"command": action.command, "description": action.description}
        if action.timeout_s:
            args["timeout"] = int(action.timeout_s * 1000)
        return "Bash", args
    if isinstance(action, WriteFile):
        return "Write", {"file_path": action.path, "content": action.content}
    if isinstance(action, EditFile):
        return "Edit", {"file_path": action.path, "old_string": action.old, "new_string": action.new}
    if isinstance(action, ReadFile):
        return "Read", {"file_path": action.path}
    if isinstance(action, ToolCall):
        return action.name, action.input
    return None


def anthropic_message(action: Action, model: str) -> dict:
    """The non-streaming Messages API answer."""
    call = anthropic_tool_use(action)
    if call:
        content = [{"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": call[0], "input": call[1]}]
    else:
        content = [{"type": "text", "text": action.text if isinstance(action, Say) else ""}]
    return {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "tool_use" if call else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def anthropic_events(action: Action, model: str) -> list[dict]:
    """The streamed answer: message_start, one content block (text_delta or input_json_delta),
    message_delta with the stop reason, message_stop."""
    msg = anthropic_message(action, model)
    block = msg["content"][0]
    start = {**msg, "content": [], "stop_reason": None, "usage": {**msg["usage"], "output_tokens": 1}}
    if block["type"] == "tool_use":
        opened, delta = {**block, "input": {}}, {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    else:
        opened, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": opened},
        {"type": "content_block_delta", "index": 0, "delta": delta},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
         "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    ]


def apply_patch_text(action: WriteFile | EditFile) -> str:
    """codex's apply_patch format (as its tool description spells it out)."""
    if isinstance(action, WriteFile):
        body = "".join(f"+{line}\n" for line in action.content.splitlines())
        return f"*** Begin Patch\n*** Add File: {action.path}\n{body}*** End Patch\n"
    old = "".join(f"-{line}\n" for line in action.old.splitlines())
    new = "".join(f"+{line}\n" for line in action.new.splitlines())
    return f"*** Begin Patch\n*** Update File: {action.path}\n@@\n{old}{new}*** End Patch\n"


# Code mode (codex's default model): the model's one tool is `exec`, JavaScript that calls the
# nested tools. A command runs to its end: exec_command yields after at most 30 s, so poll it.
CODE_MODE_SHELL = """let r = await tools.exec_command({cmd: %s, yield_time_ms: 30000});
let output = r.output;
while (r.exit_code === undefined && r.session_id !== undefined) {
  r = await tools.write_stdin({session_id: r.session_id, chars: "", yield_time_ms: 300000});
  output += r.output;
}
text(JSON.stringify({exit_code: r.exit_code, output: output}));"""

RUNNING_CELL = re.compile(r"^Script running with cell ID (\S+)")
RUNNING_SESSION = re.compile(r"Process running with session ID (\d+)")


def poll_item(turn: Turn) -> dict | None:
    """A wait for the command the last tool call left running, if it did: code mode's exec yields
    after 30 s (`wait`), the plain exec_command after its yield time (`write_stdin`)."""
    items = turn.body.get("input") or []
    last = items[-1] if items and isinstance(items[-1], dict) else {}
    if last.get("type") not in ("function_call_output", "custom_tool_call_output"):
        return None
    out = last.get("output")
    text = out if isinstance(out, str) else _text_of(out)
    call_id = f"{POLL_PREFIX}{next(_ids):06d}"
    if (m := RUNNING_CELL.match(text)) and "wait" in turn.tools:
        args: dict = {"cell_id": m.group(1), "yield_time_ms": 300000}
        return {"type": "function_call", "id": f"fc_{call_id}", "status": "completed", "call_id": call_id,
                "name": "wait", "arguments": json.dumps(args)}
    if (m := RUNNING_SESSION.search(text)) and "write_stdin" in turn.tools:
        args = {"session_id": int(m.group(1)), "chars": "", "yield_time_ms": 300000}
        return {"type": "function_call", "id": f"fc_{call_id}", "status": "completed", "call_id": call_id,
                "name": "write_stdin", "arguments": json.dumps(args)}
    return None


def openai_item(action: Action, turn: Turn) -> dict:
    """The one output item (message, function_call or custom_tool_call) an action becomes for
    codex, using whichever tools this request offers."""
    call_id = f"call_{next(_ids):06d}"
    specs = openai_tools(turn.body)
    code_mode = specs.get("exec", {}).get("type") == "custom"
    if isinstance(action, ReadFile):
        action = Shell(f"cat {shlex.quote(action.path)}")
    if isinstance(action, WriteFile | EditFile):
        patch = apply_patch_text(action)
        if code_mode:
            action = ToolCall("exec", f"text(await tools.apply_patch({json.dumps(patch)}));", custom=True)
        elif "apply_patch" in specs:
            custom = specs["apply_patch"].get("type") == "custom"
            action = ToolCall("apply_patch", patch if custom else {"input": patch}, custom=custom)
        else:  # codex intercepts an apply_patch heredoc given to its shell
            action = Shell(f"apply_patch <<'EOF'\n{patch}EOF")
    if isinstance(action, Shell):
        if code_mode:
            action = ToolCall("exec", CODE_MODE_SHELL % json.dumps(action.command), custom=True)
        elif "exec_command" in specs:
            action = ToolCall("exec_command", {"cmd": action.command, "yield_time_ms": 30000})
        elif "shell_command" in specs:
            action = ToolCall("shell_command", {"command": action.command})
        else:
            action = ToolCall("shell", {"command": ["bash", "-lc", action.command]})
    if isinstance(action, ToolCall) and action.custom:
        return {"type": "custom_tool_call", "id": f"ctc_{call_id}", "status": "completed", "call_id": call_id,
                "name": action.name, "input": action.input}
    if isinstance(action, ToolCall):
        return {"type": "function_call", "id": f"fc_{call_id}", "status": "completed", "call_id": call_id,
                "name": action.name, "arguments": json.dumps(action.input)}
    text = action.text if isinstance(action, Say) else ""
    return {"type": "message", "id": f"msg_{call_id}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def openai_events(item: dict, model: str) -> list[dict]:
    """The streamed Responses API answer: response.created, output_item.added/done for one item
    (with an output_text delta for a message), response.completed with usage."""
    rid = f"resp_{next(_ids):06d}"
    response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                "model": model, "output": []}
    events: list[dict] = [{"type": "response.created", "response": response},
                          {"type": "response.output_item.added", "output_index": 0,
                           "item": {**item, "status": "in_progress"}}]
    if item["type"] == "message":
        events.append({"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                       "content_index": 0, "delta": item["content"][0]["text"]})
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
    events += [{"type": "response.output_item.done", "output_index": 0, "item": item},
               {"type": "response.completed",
                "response": {**response, "status": "completed", "output": [item], "usage": usage}}]
    return events


# ---------------------------------------------------------------------------------------------
# The server.

SECRET_HEADERS = {"authorization", "x-api-key", "cookie", "proxy-authorization"}


class ModelAPI:
    """The scripted model server. `playbook` answers the agent's requests; `requests` records
    all of them (and `log_path`, one JSON object a line), credentials shown as "<redacted>"."""

    def __init__(self, playbook: Playbook | None = None, *, log_path: str | Path | None = None,
                 model: str = "scripted-model"):
        self.playbook: Playbook = playbook or script()
        self.model = model
        self.log_path = Path(log_path) if log_path else None
        self.requests: list[dict] = []
        self.turns: list[Turn] = []
        self.errors: list[str] = []  # exceptions raised by the playbook, shown to the test
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the CLIs' HTTP clients expect

            def log_message(self, *args):
                pass

            def do_GET(self):
                api._handle(self, None)

            def do_HEAD(self):
                api._handle(self, None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                api._handle(self, raw)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):  # no getfqdn(): it can hang for seconds without DNS
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

            def handle_error(self, request, client_address):  # a CLI hanging up is no news
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -- lifecycle
    def stop(self) -> None:
        self._stopping.set()  # releases Hang()s
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ModelAPI:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries for tests
    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].split("?")[0] == path]

    def tool_results(self) -> list[ToolResult]:
        """The tool results of the longest conversation seen (the agent's main one)."""
        return max(self.turns, key=lambda t: len(t.tool_results)).tool_results if self.turns else []

    # -- handling
    def _record(self, handler: BaseHTTPRequestHandler, raw: bytes | None) -> dict:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        headers = {k.lower(): "<redacted>" if k.lower() in SECRET_HEADERS else v for k, v in handler.headers.items()}
        entry = {"time": time.time(), "method": handler.command, "path": handler.path, "headers": headers, "body": body}
        with self._lock:
            self.requests.append(entry)
            if self.log_path:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        return entry

    def _handle(self, h: BaseHTTPRequestHandler, raw: bytes | None) -> None:
        entry = self._record(h, raw)
        path = h.path.split("?")[0]
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        if h.command == "POST" and path.endswith("/messages/count_tokens"):
            return self._json(h, 200, {"input_tokens": 100})
        if h.command == "POST" and path.endswith("/messages"):
            return self._answer(h, parse_anthropic(body), body)
        if h.command == "POST" and path.endswith("/responses"):
            return self._answer(h, parse_openai(body), body)
        if h.command == "HEAD" and path == "/api/hello":  # claude's connectivity probe (nonessential traffic)
            return self._json(h, 200, {})
        if h.command == "GET" and path.endswith("/models"):
            return self._json(h, 200, {"object": "list", "data": [], "models": []})
        self._json(h, 404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {path}"}})

    def _answer(self, h: BaseHTTPRequestHandler, turn: Turn, body: dict) -> None:
        with self._lock:
            self.turns.append(turn)
        model = body.get("model") or self.model
        poll = poll_item(turn) if turn.api == "openai" else None
        if poll:  # a command still running: wait for it without bothering the playbook
            return self._stream(h, openai_events(poll, model), cut=False)
        try:
            action = self.playbook(turn)
        except Exception as e:  # noqa: BLE001 - a broken playbook must show in the test, not kill the thread
            self.errors.append(f"{type(e).__name__}: {e}")
            action = HttpError(500, f"playbook failed: {e}")
        if isinstance(action, Hang):
            if action.headers:
                h.send_response(200)
                h.send_header("Content-Type", "text/event-stream")
                h.end_headers()
                h.wfile.flush()
            self._stopping.wait()
            h.close_connection = True
            return
        if isinstance(action, HttpError):
            err = ({"type": "error", "error": {"type": "api_error", "message": action.message}} if turn.api == "anthropic"
                   else {"error": {"type": "server_error", "code": "server_error", "message": action.message}})
            return self._json(h, action.status, err)
        inner = action.action if isinstance(action, BrokenStream) else action
        if turn.api == "anthropic" and not body.get("stream"):
            return self._json(h, 200, anthropic_message(inner, model))
        events = (anthropic_events(inner, model) if turn.api == "anthropic"
                  else openai_events(openai_item(inner, turn), model))
        self._stream(h, events, cut=isinstance(action, BrokenStream))

    @staticmethod
    def _stream(h: BaseHTTPRequestHandler, events: list[dict], cut: bool) -> None:
        if cut:  # no final events: no message_delta/message_stop, no output_item.done/response.completed
            events = events[:-2]
        payload = _sse(events)
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Length", str(len(payload)))
        if cut:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


# ---------------------------------------------------------------------------------------------
# Pointing the real CLIs here (tests/agents/FACTS.md says how each setting was checked).

# Claude Code: no telemetry, error reports, update checks or other "nonessential" requests
# (with these set, strace shows its only connection is the one to this server).
CLAUDE_QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}


def claude_env(url: str, *, request_timeout_s: float | None = None, max_retries: int | None = None) -> dict[str, str]:
    """Environment for `claude` against this server. By default claude waits 600 s for an
    answer and retries 10 times; `request_timeout_s` / `max_retries` shorten that."""
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-scripted", **CLAUDE_QUIET_ENV}
    if request_timeout_s is not None:
        env["API_TIMEOUT_MS"] = str(int(request_timeout_s * 1000))
    if max_retries is not None:
        env["CLAUDE_CODE_MAX_RETRIES"] = str(max_retries)
    return env


CODEX_PROVIDER = "scripted"
CODEX_KEY_ENV = "RK_MODEL_API_KEY"


def codex_config(url: str, *, idle_timeout_s: float = 60, retries: int = 0, sandbox: str | None = None,
                 network: bool = True) -> str:
    """$CODEX_HOME/config.toml for `codex exec` against this server: our provider (Responses
    API), approvals never asked, no plugin sync (a `git ls-remote` to github.com), no analytics,
    no update check, no endless reconnects; every key is accepted by `codex exec --strict-config`.
    Set RK_MODEL_API_KEY (any value) in codex's environment."""
    lines = [
        f'model_provider = "{CODEX_PROVIDER}"',
        'approval_policy = "never"',
        "check_for_update_on_startup = false",
    ]
    if sandbox:
        lines.append(f'sandbox_mode = "{sandbox}"')
    lines += [
        "[analytics]", "enabled = false",
        "[features]", "plugins = false", "remote_plugin = false", "unbounded_connection_retries = false",
        "[sandbox_workspace_write]", f"network_access = {str(network).lower()}",
        f"[model_providers.{CODEX_PROVIDER}]",
        f'name = "{CODEX_PROVIDER}"',
        f'base_url = "{url}/v1"',
        'wire_api = "responses"',
        f'env_key = "{CODEX_KEY_ENV}"',
        f"request_max_retries = {retries}",
        f"stream_max_retries = {retries}",
        f"stream_idle_timeout_ms = {int(idle_timeout_s * 1000)}",
    ]
    return "\n".join(lines) + "\n"


def codex_env(codex_home: str | Path) -> dict[str, str]:
    """Environment for `codex`: CODEX_HOME must not lie under the system temp dir ($TMPDIR or
    /tmp), or codex makes no helper aliases and every sandboxed command fails with
    `bwrap: execvp codex-linux-sandbox: No such file or directory`."""
    return {"CODEX_HOME": str(codex_home), CODEX_KEY_ENV: "sk-scripted"}


def make_codex_home(url: str, **config) -> Path:
    """A fresh CODEX_HOME holding `codex_config(url, **config)`, outside the system temp dir (see
    codex_env); /var/tmp by default, RK_CODEX_HOME_ROOT to choose. The caller removes it."""
    root = Path(os.environ.get("RK_CODEX_HOME_ROOT") or "/var/tmp")
    if Path(tempfile.gettempdir()).resolve() in (root.resolve(), *root.resolve().parents):
        raise RuntimeError(f"{root} is under the temp dir {tempfile.gettempdir()}: codex's sandbox would fail there")
    home = Path(tempfile.mkdtemp(prefix="rk-codex-home-", dir=root))
    (home / "config.toml").write_text(codex_config(url, **config), encoding="utf-8")
    return home


REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "tests" / "agents" / "scripts" / "install-agent-clis"


def find_agent_clis() -> Path | None:
    """The bin directory of the pinned claude and codex (tests/agents/package-lock.json), or None
    when tests/agents/scripts/install-agent-clis has not installed them."""
    try:
        out = subprocess.run([str(INSTALLER), "--check"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    path = Path(out.stdout.strip()) if out.returncode == 0 else None
    return path if path and (path / "claude").exists() and (path / "codex").exists() else None


def pinned_versions() -> dict[str, str]:
    """{"claude": "2.1.x", "codex": "0.16x.y"} from the lock file."""
    lock = json.loads((REPO / "tests" / "agents" / "package-lock.json").read_text(encoding="utf-8"))
    pkgs = lock["packages"]
    return {"claude": pkgs["node_modules/@anthropic-ai/claude-code"]["version"],
            "codex": pkgs["node_modules/@openai/codex"]["version"]}


# Looked up once, at import (before the tests' autouse fixture points HOME at tmp_path).
AGENT_BIN = find_agent_clis()
# The real-CLI cycles that ran (tests/py/test_agent_cycles.py), for conftest's summary.
CYCLES: list[dict] = []
