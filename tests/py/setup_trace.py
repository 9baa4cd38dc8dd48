"""The startup script's setup, step by step, from a fake VM's traced run.log (FakeVMs with
trace_startup: bash's xtrace, each line stamped with $EPOCHREALTIME): what test_bare_startup
checks and bench/setup_time.py measures."""

from __future__ import annotations

import re
from itertools import pairwise

# The script's steps before the user's command, in the order it takes them: (label, what the
# traced line that starts the step matches). A step lasts until the next one starts; one the
# script skipped (python3 with apt, on an image that has python3) is not there.
STEPS = (
    ("python3 with apt", r"rk_apt python3"),
    ("unpack the agent's core", r"tar -xz "),
    ("status BOOT", r"rk boot"),
    ("status SETUP, the rest of the agent, the code", r"rk status SETUP -- get-agent"),
    ("requirements.txt", r"rk requirements"),
    ("status RUN, heartbeat", r"rk heartbeat -- status RUN"),
    ("command", r"timeout "),
)
# The parts of `rk requirements`, as its line in the log says them.
REQUIREMENTS_PARTS = re.compile(r"requirements.txt installed \((uv [\d.]+ s), (venv [\d.]+ s), (install [\d.]+ s)\)")


def setup_split(log: str) -> dict:
    """{"steps": seconds per step up to the user's command (the requirements step also in its
    parts, indented: fetching uv, the venv, the install), "before_command": their sum}."""
    lines = [(float(t), cmd) for t, cmd in re.findall(r"^\+ (\d+\.\d+) (.*)$", log, re.M)]
    starts, pending = [("start", lines[0][0])], list(STEPS)
    for t, cmd in lines:
        matched = next((i for i, (_label, pattern) in enumerate(pending) if re.match(pattern, cmd)), None)
        if matched is not None:
            starts.append((pending[matched][0], t))
            del pending[:matched + 1]
    if starts[-1][0] != "command":
        starts.append(("end", lines[-1][0]))
    parts = REQUIREMENTS_PARTS.search(log)
    steps = {}
    for (label, t), (_, t_next) in pairwise(starts):
        steps[label] = round(t_next - t, 2)
        if label == "requirements.txt" and parts:
            steps.update({f"  {p.split()[0]}": float(p.split()[1]) for p in parts.groups()})
    return {"steps": steps, "before_command": round(starts[-1][1] - starts[0][1], 2)}
