"""The embedded VM's one agent process (researchkit_py/vm_serve.py): both ends of its protocol —
the script's rk/rk_ask in real bash, the process in real Python — and a run that loses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from researchkit_py import vm_serve

REPO = Path(__file__).resolve().parents[2]

# The process under test, with an answer that says what it was asked: its pid, the arguments,
# the environment it was given; it exits with the first argument.
SERVER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from researchkit_py.vm_serve import serve

    def answer(args, environ):
        print(json.dumps({"pid": os.getpid(), "args": args, "late": environ.get("LATE"),
                          "run": environ.get("RK_RUN_ID")}), flush=True)
        if args[0] == "exit":
            raise SystemExit("the agent said why")
        return int(args[0])

    code = serve(answer, 4)
    print("agent process done", flush=True)
    sys.exit(code)
""")


def test_the_scripts_calls_reach_one_process_and_come_back_as_their_own(tmp_path):
    """Arguments arrive as given (spaces, newlines, empty ones), with the shell's environment of
    the moment; the exit status comes back; output goes where the script's goes; the script's
    last act ends the process (it exits 0, not killed); after that rk starts the agent itself."""
    (tmp_path / "server.py").write_text(SERVER)
    body = vm_serve.RK_BODY.format(direct='echo "direct $*"')  # the agent started directly: a stand-in
    script = "\n".join([
        "set -euo pipefail",
        "export RK_RUN_ID=run-1",
        "rk() {", body, "}",
        vm_serve.RK_ASK,
        f"coproc RK_AGENT {{ exec {sys.executable} -S {tmp_path / 'server.py'} {REPO} 4>&1 >&2; }}",
        """rk 0 "a b" "" $'x\\ny'""",
        "export LATE=yes",
        'rk 3 || echo "rc=$?"',
        'rk exit || echo "rc=$?"',
        'rk_agent_done; echo "agent done $?"',
        "rk 0 after",
    ])
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "rc=3\nrc=1\nagent done 0\ndirect 0 after\n"
    asked = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert [a["args"] for a in asked] == [["0", "a b", "", "x\ny"], ["3"], ["exit"]]
    assert [a["late"] for a in asked] == [None, "yes", "yes"] and {a["run"] for a in asked} == {"run-1"}
    assert len({a["pid"] for a in asked}) == 1
    assert "the agent said why" in r.stderr and "agent process done" in r.stderr


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_requests_are_whole_however_the_pipe_splits_them(chunk):
    message = b"\0".join([b"1", b"2", b"status", b"", b"A=1", b"B=x=y", b"", b"2", b"0", b"C=\n", b""]) + b"\0"
    read, write = os.pipe()
    for i in range(0, len(message), chunk):
        os.write(write, message[i:i + chunk])
    os.close(write)
    got = list(vm_serve.requests(read, os.getppid()))
    os.close(read)
    assert got == [("1", ["status", ""], {"A": "1", "B": "x=y"}), ("2", [], {"C": "\n"})]


def test_a_run_whose_agent_process_is_gone_still_reports_and_brings_its_results(project, tmp_path):
    """The command kills the agent's process mid-run: the rest of the run's calls start the agent
    themselves, and nothing of the run's end is lost."""
    out = tmp_path / "r"
    kill = "pkill -s 0 -f 'researchkit_py.vm_agent[ ]serve' && echo agent-gone; "  # [ ]: not this command's own shell
    r = subprocess.run([str(REPO / "tools" / "cloud-run"), "run", kill + 'mkdir -p "$RESULTS_DIR"; echo 1 > "$RESULTS_DIR/m.txt"',
                        "--output-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "m.txt").read_text() == "1\n"
    run_id = r.stdout.strip()
    log = (tmp_path / "state" / "local" / "bucket" / "runs" / run_id / "logs" / "run.log").read_text()
    assert "agent-gone" in log and log.rstrip().endswith("researchkit: DONE (command exited 0)")
    assert not list((tmp_path / "state" / "local" / "instances").glob("*.json"))
