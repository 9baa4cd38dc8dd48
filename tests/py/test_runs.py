from __future__ import annotations

import re

import pytest

from researchkit_py import protocol

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
