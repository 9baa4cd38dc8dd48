"""Phase logs are JSON lines (Claude Code stream-json, Codex --json, our scripted agent's):
render them as readable lines, summarise them, follow them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def render_event(line: str) -> str | None:
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return line  # plain output is shown as it is
    if not isinstance(ev, dict):
        return line
    kind = ev.get("type", "")
    if kind == "system":
        if ev.get("subtype") == "api_retry":  # claude: the model API failed; it tries again
            return f"[retry {ev.get('attempt')}/{ev.get('max_retries')}] {ev.get('error_status') or ''} {ev.get('error') or ''}".rstrip()
        return f"[{ev.get('subtype', 'system')}] {ev.get('agent') or ev.get('model') or ''} {ev.get('phase', '')}".rstrip()
    if kind in ("assistant", "user"):
        parts = []
        for c in (ev.get("message") or {}).get("content") or []:
            if c.get("type") == "text":
                parts.append(c.get("text", ""))
            elif c.get("type") == "tool_use":
                parts.append(f"→ {c.get('name')} {json.dumps(c.get('input', {}))[:200]}")
            elif c.get("type") == "tool_result":
                content = c.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                parts.append(f"← {text[:300]}")
        return "\n".join(parts) or None
    if kind == "result":
        flag = "error" if ev.get("is_error") else "done"
        cost = f", ${ev['total_cost_usd']:.2f}" if isinstance(ev.get("total_cost_usd"), (int, float)) else ""
        secs = f" in {ev['duration_ms'] / 1000:.1f}s" if isinstance(ev.get("duration_ms"), (int, float)) else ""
        return f"[{flag}{secs}{cost}] {ev.get('result', '')}".rstrip()
    return _render_codex(kind, ev)


def _render_codex(kind: str, ev: dict) -> str | None:
    """codex exec --json (the event shapes are in tests/agents/FACTS.md)."""
    item = ev.get("item") or {}
    what = item.get("type")
    if kind == "thread.started":
        return f"[init] codex thread {ev.get('thread_id', '')}".rstrip()
    if kind == "item.started" and what == "command_execution":
        return f"→ $ {item.get('command')}"
    if kind == "item.completed":
        if what == "agent_message":
            return item.get("text")
        if what == "command_execution":
            output = (item.get("aggregated_output") or "").strip()
            return f"← exit {item.get('exit_code')}" + (f": {output[-300:]}" if output else "")
        if what == "file_change":
            return "\n".join(f"✎ {c.get('kind')} {c.get('path')}" for c in item.get("changes") or []) or None
        if what == "error":
            return f"[warning] {item.get('message', '')}"
        return None
    if kind == "error":
        return f"[error] {ev.get('message', '')}"
    if kind == "turn.completed":
        usage = ev.get("usage") or {}
        return f"[done] {usage.get('input_tokens', 0)} tokens in, {usage.get('output_tokens', 0)} out"
    if kind == "turn.failed":
        return f"[error] {(ev.get('error') or {}).get('message', '')}".rstrip()
    return None


def is_final(line: str) -> bool:
    try:
        return json.loads(line).get("type") in ("result", "turn.completed", "turn.failed")
    except (ValueError, AttributeError):
        return False


def summary(path: Path) -> str:
    """One or two lines: the agent's final word, and whether it ended in error."""
    final, last_text, tools = "", "", 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        if ev.get("type") == "result":
            final = ("ERROR: " if ev.get("is_error") else "") + str(ev.get("result", ""))
        elif ev.get("type") == "assistant":
            for c in (ev.get("message") or {}).get("content") or []:
                tools += c.get("type") == "tool_use"
                if c.get("type") == "text":
                    last_text = c.get("text", "")
        elif ev.get("type") == "item.completed":  # codex
            item = ev.get("item") or {}
            tools += item.get("type") in ("command_execution", "file_change")
            if item.get("type") == "agent_message":
                last_text = item.get("text", "")
        elif ev.get("type") == "turn.failed":
            final = "ERROR: " + str((ev.get("error") or {}).get("message", ""))
    text = (final or last_text or "(no summary in the log)").strip()
    lines = text.splitlines()
    short = "\n".join(lines[:6]) + ("\n…" if len(lines) > 6 else "")
    return short + (f"\n({tools} tool calls)" if tools else "")


def follow(path: Path, out=sys.stdout, keep_following: bool = True, poll: float = 0.2) -> None:
    """Print rendered events; stop at the final event (or at end of file when not following)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        while True:
            line = f.readline()
            if not line:
                if not keep_following:
                    return
                time.sleep(poll)
                continue
            text = render_event(line)
            if text:
                print(text, file=out, flush=True)
            if is_final(line):
                return
