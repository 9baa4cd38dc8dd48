"""A run's log as the VM ships it, at each heartbeat and at the end (the rest of the agent).

Only what the log gained goes up: Store.append_file (GCS composes, a directory appends, S3
copies the log server-side and adds the new bytes as a second part). S3 can copy only a part of
at least 5 MiB (store.log_chunk_limit), so below that each push's new bytes go up as a chunk of
their own beside the log (protocol.log_chunk_key, named by the offset they start at), which
followers read after the log. The first push past the limit, the last push of a short log and
every MAX_CHUNKS-th chunk write the log whole once and remove the chunks: the final log is one
object.

What the bucket holds is kept in RK_ROOT/log.json (each heartbeat is a process of its own),
written before a chunk goes up (`pending`) and after: a push cut short between the two puts
the same bytes under the same key again, so a chunk never changes once a follower may have
read it, and a retry never appends twice. A lock keeps the final push from running beside a
heartbeat's.

Standard library only (it runs on the VM).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys

from . import protocol

# A log that stays short for hours (a line a heartbeat) is written whole every this many chunks:
# a crashed run's log is then a few reads, and the final push removes a few objects.
MAX_CHUNKS = 32
STATE = "log.json"


def push_log(agent, final: bool = False) -> None:
    """Ship what the log gained since the last push (`final`: the log as one object)."""
    if not agent.log_path.exists():
        return
    with open(agent.env.root / "log.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the process goes, however it goes
        _Pusher(agent).push(final)


class _Pusher:
    def __init__(self, agent):
        self.agent, self.store, self.root = agent, agent.store, agent.env.root
        self.key = agent.key(protocol.LOG)
        # pushed: the bytes the bucket holds (-1: nothing yet); chunks: the starts of the chunks
        # past the log object; stale: chunks the log object now holds, still to remove
        self.state = {"pushed": -1, "chunks": [], "stale": [], "pending": None}
        path = self.root / STATE
        if path.is_file():
            self.state.update(json.loads(path.read_text()))

    def save(self) -> None:
        tmp = self.root / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.root / STATE)

    def push(self, final: bool) -> None:
        log, limit = self.agent.log_path, self.store.log_chunk_limit
        end = log.stat().st_size
        if self.state["pending"]:  # cut short after (perhaps) putting it: the same chunk again
            self.chunk(*self.state["pending"])
        start, chunks = self.state["pushed"], self.state["chunks"]
        would_chunk = bool(limit) and max(start, 0) < end < limit
        if (limit and (chunks or start < 0) and (end >= limit or len(chunks) >= MAX_CHUNKS)) \
                or (final and (chunks or start < 0 or would_chunk)):
            self.store.append_file(log, self.key, 0, end)  # the log whole, once
            self.state.update(pushed=end, chunks=[], stale=self.state["stale"] + chunks)
            self.save()
        elif end <= max(start, 0):
            pass
        elif would_chunk:
            self.chunk(max(start, 0), end)
        else:
            self.store.append_file(log, self.key, max(start, 0), end)
            self.state["pushed"] = end
            self.save()
        self.remove_stale()

    def chunk(self, start: int, end: int) -> None:
        self.state["pending"] = [start, end]
        self.save()
        with open(self.agent.log_path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        self.store.put_bytes(protocol.log_chunk_key(self.agent.env.run_id, start), data)
        self.state.update(pushed=end, chunks=[*self.state["chunks"], start], pending=None)
        self.save()

    def remove_stale(self) -> None:
        """The chunks the log object holds now go; one that will not waits for the next push
        (readers never reach it: they read chunks from the log object's end on)."""
        while self.state["stale"]:
            start = self.state["stale"][0]
            try:
                self.store.delete(protocol.log_chunk_key(self.agent.env.run_id, start))
            except Exception as e:  # noqa: BLE001 - the log is whole already; this is tidying
                if not self.state.get("warned"):  # once: it may go to the log itself at every heartbeat
                    print(f"researchkit: could not remove a chunk of the log ({e}); later pushes try again",
                          file=sys.stderr, flush=True)
                    self.state["warned"] = True
                    self.save()
                return
            self.state["stale"].pop(0)
            self.save()
