"""`monitor.wait` following run r1's log in a store while a VM, on a thread, writes it: what
the log-following tests of every store share."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

from researchkit_py import protocol
from researchkit_py.lifecycle import monitor


def follow_while(store, vm: Callable[[], None], monkeypatch, poll: float) -> tuple[dict, str]:
    """The run's final state and what the follower showed on stderr."""
    now = time.time()
    store.write_json(protocol.run_key("r1", protocol.MANIFEST), {
        "instance": "i-1", "provider": "local", "created_at": protocol.iso(now),
        "expires_at": protocol.iso(now + 3600), "heartbeat_seconds": 1})
    ctx = SimpleNamespace(store=store, poll_seconds=lambda: poll,
                          provider=SimpleNamespace(name="local", get=lambda name: SimpleNamespace(alive=True)))
    writer = threading.Thread(target=vm)
    writer.start()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    state = monitor.wait(ctx, "r1")
    writer.join()
    return state, sys.stderr.getvalue()
