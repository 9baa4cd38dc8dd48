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
])
def test_client_exit_code(status, code):
    assert protocol.client_exit_code(status) == code


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
