from __future__ import annotations

import re

import pytest

from researchkit_py import protocol
from researchkit_py.errors import UsageError

M = {"created_at": "2026-11-22T10:00:00Z", "expires_at": "2026-11-22T11:00:00Z", "heartbeat_seconds": 30}
T0 = protocol.parse_iso("2026-11-22T10:00:00Z")


def test_run_ids_sort_by_time_are_unique_and_make_valid_names():
    ids = {protocol.new_run_id("Exp 001: Logistic/Regression!") for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        assert re.fullmatch(r"exp-001-logistic-regress-\d{8}-\d{6}-[0-9a-f]{8}", rid), rid
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", protocol.instance_name(rid))
    assert protocol.new_run_id("123").startswith("run-123-")


@pytest.mark.parametrize("status,heartbeat,alive,at,expect", [
    ({"phase": "DONE", "exit_code": 0}, None, False, T0 + 99999, "DONE"),
    ({"phase": "RUN"}, T0 + 100, True, T0 + 5000, "RUN"),             # alive: trust the VM
    ({"phase": "RUN"}, T0 + 100, False, T0 + 120, "RUN"),             # just gone: wait for its status
    ({"phase": "RUN"}, T0 + 100, False, T0 + 500, "FAILED/lost"),     # gone and silent
    ({"phase": "RUN"}, T0 + 3000, False, T0 + 3700, "FAILED/timeout"),  # gone after its deadline
    (None, None, False, T0 + 50, "PENDING"),
    (None, None, False, T0 + 500, "FAILED/lost"),                     # never booted
])
def test_effective_status(status, heartbeat, alive, at, expect):
    s = protocol.effective_status(M, status, heartbeat, alive, at)
    assert (s["phase"] if s["phase"] != "FAILED" else f"FAILED/{s['cause']}") == expect


@pytest.mark.parametrize("status,code", [
    ({"phase": "DONE", "exit_code": 0}, 0),
    ({"phase": "FAILED", "cause": "exit", "exit_code": 3}, 3),
    ({"phase": "FAILED", "cause": "timeout", "exit_code": 124}, 124),
    ({"phase": "FAILED", "cause": "upload_error", "exit_code": 0}, 125),  # never success without results
    ({"phase": "FAILED", "cause": "boot_error", "exit_code": None}, 125),
    ({"phase": "FAILED", "cause": "lost", "exit_code": None}, 125),
    ({"phase": "CANCELLED", "cause": "cancelled", "exit_code": None}, 130),
])
def test_client_exit_code(status, code):
    assert protocol.client_exit_code(status) == code


@pytest.mark.parametrize("stage", ["BOOT", "SETUP", "RUN", "UPLOAD"])
def test_a_cancelled_run_is_cancelled_whatever_its_stage(stage):
    s = protocol.final_status(stage, None, protocol.CANCELLED_CAUSE)
    assert (s["phase"], s["cause"], s["message"]) == ("CANCELLED", "cancelled", f"cancelled during {stage}")
    assert "CANCELLED" in protocol.FINAL  # a client waiting for the end stops there


def test_a_run_that_reached_its_end_keeps_its_result_even_if_cancelled_late():
    assert protocol.final_status("DONE", 0, protocol.EXIT)["phase"] == "DONE"


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "/etc", "x/y", "", "Run-1", "1run", "a b", "a\n", "a" * 64,
                                 "run-20261122-000000-abcd\n"])
def test_a_run_id_that_could_leave_its_prefix_or_folder_is_refused(bad):
    """A run id becomes a bucket prefix (runs/<id>/) and a results folder (results/<id>):
    anything but a lowercase name is refused with one line that says where the ids are."""
    with pytest.raises(UsageError) as e:
        protocol.check_run_id(bad)
    assert str(e.value) == f"{bad!r} is not a run id; `cloud-run ls` lists them"


def test_every_new_run_id_passes_the_check_unchanged():
    for label in ("run", "Exp 001: Logistic/Regression!", "x" * 80, "123"):
        rid = protocol.new_run_id(label)
        assert protocol.check_run_id(rid) == rid
    assert protocol.check_run_id("a" * 63) == "a" * 63


@pytest.mark.parametrize(("label", "expect"), [("a1", "a1"), ("1a", "run-1a"), ("--X y--", "x-y"), ("", "run"),
                                               ("ab" * 20, "ab" * 12)])
def test_a_label_becomes_a_name_that_starts_with_a_letter(label, expect):
    assert protocol.slug(label) == expect


def test_the_instance_name_fits_gce_and_never_ends_in_a_dash():
    assert protocol.instance_name("a" * 63) == "rk-" + "a" * 60
    assert protocol.instance_name("a" * 59 + "-b") == "rk-" + "a" * 59  # cut at 63, then the dash
    assert protocol.instance_name("run-1") == "rk-run-1"


@pytest.mark.parametrize(("max_hours", "expect"), [
    (1, (3600, 3420)),        # 5 % of the run for the trap's uploads
    (2, (7200, 6900)),        # at most 5 minutes
    (0.1, (360, 342)),
    (0.02, (72, 62)),         # at least 10 s
    (0.001, (4, 1)),          # the command always gets a second
    (1e-9, (1, 1)),
])
def test_deadlines_leave_the_trap_time_before_the_hard_one(max_hours, expect):
    assert protocol.deadlines(max_hours) == expect


@pytest.mark.parametrize("max_hours", [0, -1, -0.5])
def test_a_deadline_that_is_not_positive_is_refused(max_hours):
    with pytest.raises(UsageError, match=r"^--max-hours must be positive$"):
        protocol.deadlines(max_hours)


@pytest.mark.parametrize(("stage", "rc", "cause", "step", "expect"), [
    ("DONE", 0, "", "", ("DONE", "exit", "command exited 0")),
    ("DONE", 3, "", "", ("FAILED", "exit", "command exited 3")),
    ("DONE", 124, "timeout", "", ("FAILED", "timeout", "command ran past its deadline")),
    ("DONE", 0, "terminated", "", ("FAILED", "terminated", None)),    # a signal after a clean exit still counts
    ("SETUP", None, "", "installing requirements.txt", ("FAILED", "boot_error", None)),
    ("BOOT", None, "terminated", "", ("FAILED", "terminated", None)),  # a signal wins over the stage
    ("SETUP", None, "gpu_unavailable", "checking the GPU", ("FAILED", "gpu_unavailable", None)),
    ("RUN", None, "", "", ("FAILED", "terminated", None)),             # the script died mid-command
    ("UPLOAD", 0, "", "", ("FAILED", "upload_error", None)),
])
def test_the_final_status_the_trap_writes(stage, rc, cause, step, expect):
    s = protocol.final_status(stage, rc, cause, step)
    phase, want_cause, message = expect
    assert (s["phase"], s["cause"], s["exit_code"], s["stage"], s["step"]) == (phase, want_cause, rc, stage, step)
    if message:
        assert s["message"] == message
    assert s["message"].endswith(f": {step}") if step else ":" not in s["message"]


@pytest.mark.parametrize(("manifest", "since_heartbeat", "expect"), [
    (M, 89, "RUN"), (M, 90, "FAILED/lost"),                     # three heartbeats of 30 s
    ({**M, "heartbeat_seconds": 0}, 2, "RUN"), ({**M, "heartbeat_seconds": 0}, 3, "FAILED/lost"),  # never under 3 s
    ({k: v for k, v in M.items() if k != "heartbeat_seconds"}, 89, "RUN"),  # 30 s when the manifest has none
    ({k: v for k, v in M.items() if k != "heartbeat_seconds"}, 90, "FAILED/lost"),
])
def test_a_vm_gone_silent_is_lost_after_three_heartbeats(manifest, since_heartbeat, expect):
    s = protocol.effective_status(manifest, {"phase": "RUN"}, T0 + 100, False, T0 + 100 + since_heartbeat)
    assert (s["phase"] if s["phase"] != "FAILED" else f"FAILED/{s['cause']}") == expect
    if expect == "FAILED/lost":
        assert s["message"] == "the instance is gone and stopped reporting" and s["exit_code"] is None


def test_a_vm_gone_silent_at_its_deadline_timed_out():
    at = protocol.parse_iso(M["expires_at"])
    s = protocol.effective_status(M, {"phase": "RUN"}, at - 500, False, at)
    assert (s["phase"], s["cause"]) == ("FAILED", "timeout")
    assert s["message"] == "the instance is gone and stopped reporting after its deadline"


@pytest.mark.parametrize("status,code", [
    ({"phase": "DONE"}, 0),
    ({"phase": "FAILED", "cause": "exit", "exit_code": 0}, 125),  # FAILED is never success
    ({"phase": "FAILED", "cause": "boot_error", "exit_code": 1}, 125),
])
def test_client_exit_code_never_reports_success_for_a_failed_run(status, code):
    assert protocol.client_exit_code(status) == code


def test_the_manifest_records_the_launch_and_its_defaults():
    m = protocol.RunManifest(run_id="r", provider="gce", instance="rk-r", command="c", bundle="code/x.tar.gz",
                             created_at="t0", expires_at="t1", max_hours=1.5, heartbeat_seconds=30)
    assert m.to_dict() == {
        "run_id": "r", "provider": "gce", "instance": "rk-r", "command": "c", "bundle": "code/x.tar.gz",
        "created_at": "t0", "expires_at": "t1", "max_hours": 1.5, "heartbeat_seconds": 30, "zone": "",
        "machine_type": "", "gpu": "", "gpu_count": 0, "spec": "", "experiment": "", "results_subdir": "results",
        "data_dirs": [], "env_keys": [], "worst_case_cost_usd": None, "detached": False}
