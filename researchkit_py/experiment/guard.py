"""The PreToolUse hook of Claude Code and Codex: refuse changes to the files locked for a phase
(the spec and its frozen copy in RUN; those and metrics.json in READ).

    tools/guard-hook /abs/path/locked.md ...     (experiment.sh puts this in the CLI's hooks)

Protocol (the same in both CLIs): the event arrives as JSON on stdin; exit 2 blocks the tool
call and stderr is shown to the model; exit 0 lets it run. The paths are absolute, so the
model's working directory does not matter; a shell command is also matched by file name, as
it may `cd` anywhere first. File edits are blocked exactly; shell commands by what commonly
changes a file (redirection, sed -i, chmod, cp/mv onto it, rm, tee, a script opening it for
writing): a heuristic, which the files' read-only mode backs up.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path

EDIT_TOOLS = {"Edit", "MultiEdit", "Write", "NotebookEdit"}
SHELL_TOOLS = {"Bash"}  # codex reports its shell commands as Bash too
PATCH_TOOLS = {"apply_patch"}  # codex: tool_input.command is the patch
# Commands that change the files (or trees) they name; DEST_WRITERS (and mv) their last argument.
WRITERS = {"rm", "tee", "chmod", "chown", "chattr", "truncate", "dd", "unlink", "shred", "touch", "ed", "ex",
           "vi", "vim", "nano", "patch"}
DEST_WRITERS = {"cp", "install", "ln", "rsync"}
IN_PLACE = {"sed", "perl", "ruby"}  # with -i
GIT_WRITERS = {"checkout", "restore", "rm", "mv", "apply"}
REDIRECTS = {">", ">>", ">|", "&>", "&>>"}
SCRIPT_WRITE = re.compile(r"""open\(\s*[^,()]+,\s*(?:mode\s*=\s*)?["'][rbt]*[wax+]|\.open\(\s*(?:mode\s*=\s*)?["'][rbt]*[wax+]"""
                          r"""|write_text|write_bytes|writeFile|os\.(?:remove|unlink|rename|replace|chmod)|shutil\."""
                          r"""|\.unlink\(|\.rename\(|\.chmod\(""")
PATCH_FILE = re.compile(r"^\*\*\* (?:Add File|Update File|Delete File|Move to): (.+)$", re.M)


HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1([^\n]*)\n(?:.*?\n)?\s*\2[ \t]*(?=\n|$)", re.S)
SEPARATOR = set(";&|()<>")


class Locked:
    def __init__(self, paths: list[str]):
        self.paths = {str(Path(p).resolve()) for p in paths}
        self.names = {Path(p).name for p in paths}
        self.parents = {str(d) for p in self.paths for d in Path(p).parents}

    def by_path(self, cwd: Path, target: str) -> bool:
        return bool(target) and str((cwd / target).resolve()) in self.paths

    def by_name(self, cwd: Path, word: str, dirs: bool = False) -> bool:
        """The word names a locked file: its path, or its file name (the command may have
        `cd`-ed anywhere), globs included; with dirs, also a directory holding one."""
        name = Path(word).name
        if self.by_path(cwd, word) or any(fnmatch.fnmatchcase(n, name) for n in self.names if name):
            return True
        return dirs and str((cwd / word).resolve()) in self.parents


def shell_writes(command: str, cwd: Path, locked: Locked) -> bool:
    """Whether a shell command may change a locked file."""
    mentioned = any(n in command for n in locked.names | locked.paths)
    if mentioned and SCRIPT_WRITE.search(command):
        return True
    # Here-documents are data (a script reading from one is matched above); lines are commands.
    text = HEREDOC.sub(lambda m: "<<" + m.group(2) + m.group(3), command.replace("\\\n", " "))
    for line in text.splitlines():
        try:
            words = list(shlex.shlex(line, posix=True, punctuation_chars=True))
        except ValueError:  # unbalanced quotes: cannot tell
            if mentioned:
                return True
            continue
        simple: list[str] = []
        for i, word in enumerate(words):
            if word in REDIRECTS and i + 1 < len(words) and locked.by_name(cwd, words[i + 1]):
                return True
            if word and set(word) <= SEPARATOR:
                if _writes(simple, cwd, locked):
                    return True
                simple = []
            else:
                simple.append(word)
        if _writes(simple, cwd, locked):
            return True
    return False


def _writes(words: list[str], cwd: Path, locked: Locked) -> bool:
    while words and (("=" in words[0] and not words[0].startswith("-")) or words[0] in ("sudo", "env", "command")):
        words = words[1:]  # VAR=value prefixes, sudo, env
    if not words:
        return False
    cmd, args = Path(words[0]).name, [a for a in words[1:] if a != "--"]
    if cmd == "git" and args and args[0] in GIT_WRITERS:
        cmd, args = "rm", args[1:]
    if cmd in WRITERS or (cmd in IN_PLACE and any(re.match(r"^-[a-zA-Z]*i|^--in-place", a) for a in args)):
        return any(locked.by_name(cwd, a, dirs=True) for a in args)
    if cmd in DEST_WRITERS or cmd == "mv":
        if len(args) < 2:
            return False
        *sources, dest = args
        into_locked_dir = str((cwd / dest).resolve()) in locked.parents and any(
            Path(s).name in locked.names for s in sources)
        moved_away = cmd == "mv" and any(locked.by_name(cwd, s, dirs=True) for s in sources)
        return locked.by_name(cwd, dest) or into_locked_dir or moved_away
    return False


def blocked(event: dict, locked: Locked) -> str | None:
    """What the tool call would change that is locked, or None."""
    tool = event.get("tool_name", "")
    args = event.get("tool_input") or {}
    cwd = Path(event.get("cwd") or ".")
    if tool in EDIT_TOOLS:
        target = args.get("file_path") or args.get("notebook_path") or ""
        return target if locked.by_path(cwd, target) else None
    if tool in PATCH_TOOLS:
        return next((f for f in PATCH_FILE.findall(args.get("command", "")) if locked.by_path(cwd, f.strip())), None)
    if tool in SHELL_TOOLS:
        command = args.get("command", "")
        return "this command" if shell_writes(command, cwd, locked) else None
    return None


def main(argv: list[str]) -> int:
    if not argv:
        return 0
    try:
        event = json.load(sys.stdin)
    except ValueError:
        return 0
    what = blocked(event if isinstance(event, dict) else {}, Locked(argv))
    if what is None:
        return 0
    names = ", ".join(sorted(argv))
    print(f"{what} would change a file locked during this phase ({names}) — research integrity: change the code or "
          f"the results you produce, never the spec or the measured metrics.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
