"""Stopping an attached run whose caller was interrupted: ask its VM to stop (it uploads its log
and whatever results exist, writes CANCELLED, deletes itself), wait a bounded time, then make
sure: no instance is left billing, and the run's status is final."""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager

from .. import protocol
from ..errors import KitError, say
from .context import Context

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """INT, TERM or HUP to an attached client: the run stops with it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 INT, 143 TERM, 129 HUP: what a shell reports for each


# A signal this soon after the one that interrupted us is the same interrupt delivered again, not
# a second request: experiment.sh signals its agent's process group, and the group's `timeout`
# passes the signal on to the group once more.
REPEAT_SECONDS = 1.0
_again = threading.Event()  # a later interrupt came while the run stops: delete at once


def raise_on_signals() -> None:
    """The first INT, TERM or HUP raises Interrupted (with the signal): the caller decides what
    stops. Later ones raise nothing, so no signal can cut the stop short and leave an instance
    behind; one that comes REPEAT_SECONDS or more after the first is the user's second Ctrl-C,
    which cancel() answers by deleting the instance at once. A signal ignored when we were
    started stays ignored, as a shell's trap leaves it: `nohup cloud-run run …` (HUP ignored)
    must outlive the terminal it was started from, not cancel its run when it closes."""
    first: list[float] = []
    _again.clear()

    def handler(signum, frame):
        if not first:
            first.append(time.monotonic())
            raise Interrupted(signum)
        if time.monotonic() - first[0] >= REPEAT_SECONDS:
            _again.set()

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


@contextmanager
def signals_restored():
    """What an attached run changes for its duration (the handlers, forgiving outputs), put back
    after it: a caller in the same process (the tests, in-process) gets its own again."""
    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in SIGNALS} if main else {}
    outputs = sys.stdout, sys.stderr
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = outputs


class _Forgiving:
    """An output whose reader may be gone (an agent stopped with us closes our pipes): what we say
    then must not cut the stop short."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def forgive_closed_output() -> None:
    sys.stdout, sys.stderr = _Forgiving(sys.stdout), _Forgiving(sys.stderr)


@contextmanager
def signals_ignored():
    """While the instance is deleted and the status written: nothing may cut that short."""
    if threading.current_thread() is not threading.main_thread():  # only its main thread gets signals
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def cancel_wait(ctx: Context) -> float:
    """How long the VM has to notice the request (one heartbeat or more), upload and go."""
    beat = ctx.settings.integer("RK_HEARTBEAT_SECONDS", 2 if ctx.embedded else 30)
    return ctx.settings.number("RK_CANCEL_WAIT", 3 * beat + (10 if ctx.embedded else 60))


def request_cancel(ctx: Context, run_id: str, reason: str) -> None:
    ctx.store.write_json(protocol.run_key(run_id, protocol.CANCEL),
                         {"run_id": run_id, "requested_at": protocol.iso(protocol.now()), "reason": reason})


def _status(ctx: Context, run_id: str) -> dict:
    return ctx.store.read_json_or_none(protocol.run_key(run_id, protocol.STATUS)) or {}


def cancel(ctx: Context, run_id: str, instance: str, reason: str) -> dict:
    """Stop the run; returns its final status. A second interrupt while waiting deletes the
    instance at once. The VM's own final status is kept if it wrote one (CANCELLED, or the
    run's real end if it got there first); else the client writes CANCELLED."""
    timeout = cancel_wait(ctx)
    forgive_closed_output()
    try:
        request_cancel(ctx, run_id, reason)
        say(f"cloud-run: stopping {run_id}: its VM uploads its log and results, then goes "
            f"(up to {timeout:g} s; Ctrl-C again to delete it at once)")
        end = time.time() + timeout
        while not _again.is_set():
            status, inst = _status(ctx, run_id), ctx.provider.get(instance)
            if status.get("phase") in protocol.FINAL and (inst is None or not inst.alive):
                break
            if time.time() >= end:
                say(f"cloud-run: {instance} did not stop within {timeout:g} s; deleting it")
                break
            _again.wait(ctx.poll_seconds())
        else:  # the loop ended on a second interrupt, not on a break
            say(f"cloud-run: interrupted again; deleting {instance} now")
    except KitError as e:  # the bucket or the API failed us: deleting is what is left
        say(f"cloud-run: warning: {e}; deleting {instance}")
    with signals_ignored():
        ctx.provider.delete(instance)  # no-op when it went on its own
        status = _status(ctx, run_id)
        if status.get("phase") not in protocol.FINAL:
            status = protocol.cancelled_status(run_id, f"cancelled ({reason}); the instance was deleted")
            ctx.store.write_json(protocol.run_key(run_id, protocol.STATUS), status)
    return status


def cancelled_launch(ctx: Context, run_id: str, instance: str, reason: str) -> None:
    """An interrupt before the instance existed: whatever was created goes, the run is CANCELLED.
    The request to stop comes first: a VM the cloud did not list yet, so not deleted, stops at
    its first report (vm_agent.write_status) instead of running the command unattended."""
    with signals_ignored():
        try:
            request_cancel(ctx, run_id, f"launch interrupted ({reason})")
            ctx.provider.delete(instance)
        finally:
            ctx.store.write_json(protocol.run_key(run_id, protocol.STATUS),
                                 protocol.cancelled_status(run_id, f"launch interrupted ({reason}); nothing runs"))
