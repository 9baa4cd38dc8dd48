"""Claude Code PreToolUse hook: refuse edits to the locked spec, and to metrics.json in READ.

Protocol: the event arrives as JSON on stdin; exit 2 blocks the tool call and stderr is
shown to the model; exit 0 allows it. Protected paths come from EXP_GUARD_PATHS
(colon-separated), set by experiment.sh for the phase.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..settings import Settings

EDIT_TOOLS = {"Edit", "MultiEdit", "Write", "NotebookEdit"}
# Shell commands that can change a file they name.
MUTATING = (">", "sed -i", "rm ", "mv ", "cp ", "tee ", "chmod ", "truncate ", "perl -i", "dd ", "write_text", "open(")


def main() -> int:
    protected = [p for p in Settings(read_file=False).text("EXP_GUARD_PATHS").split(":") if p]
    if not protected:
        return 0
    try:
        event = json.load(sys.stdin)
    except ValueError:
        return 0
    tool = event.get("tool_name", "")
    args = event.get("tool_input") or {}
    cwd = Path(event.get("cwd") or os.getcwd())
    resolved = {str((cwd / p).resolve()): p for p in protected}
    if tool in EDIT_TOOLS:
        target = args.get("file_path") or args.get("notebook_path") or ""
        if target and str((cwd / target).resolve()) in resolved:
            print(f"{target} is locked during this phase (research integrity): change the code or the "
                  f"results you produce, never the spec or the measured metrics.", file=sys.stderr)
            return 2
    if tool == "Bash":
        command = args.get("command", "")
        for path, shown in resolved.items():
            if (shown in command or path in command or Path(shown).name in command) and any(m in command for m in MUTATING):
                print(f"this command may modify {shown}, which is locked during this phase.", file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
