"""A finished run written straight into a bucket, as a VM would have left it: for testing
pull, status and ls without booting anything."""

from __future__ import annotations

import hashlib
import time

from researchkit_py import protocol


def finished_run(store, files: dict[str, bytes], *, command: str = "python3 train.py", label: str = "done",
                 phase: str = "DONE", exit_code: int = 0, cause: str = "exit") -> str:
    """Write manifest, results, results manifest and a final status; return the run id."""
    run_id = protocol.new_run_id(label)
    at = time.time()
    store.write_json(protocol.run_key(run_id, protocol.MANIFEST), protocol.RunManifest(
        run_id=run_id, provider="local", instance=protocol.instance_name(run_id), command=command, bundle="b",
        created_at=protocol.iso(at), expires_at=protocol.iso(at + 60), max_hours=1, heartbeat_seconds=1).to_dict())
    for path, data in files.items():
        store.put_bytes(protocol.run_key(run_id, f"{protocol.RESULTS}/{path}"), data)
    store.write_json(protocol.run_key(run_id, protocol.RESULTS_MANIFEST), {"files": [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in files.items()]})
    store.write_json(protocol.run_key(run_id, protocol.STATUS), protocol.status_record(
        run_id, phase, exit_code=exit_code, cause=cause, message=protocol.MESSAGES[cause].format(rc=exit_code, stage="")))
    return run_id


def local_store():
    """The embedded provider's bucket, as the CLI in this test's environment sees it."""
    from researchkit_py.lifecycle import Context
    from researchkit_py.settings import Settings

    return Context.open(Settings(), "local").store
