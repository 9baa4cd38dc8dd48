"""The helper the startup script calls on the VM: status, heartbeat, transfers, self-delete.

It is shipped inside the startup script itself (see startup.py), so it is in place before
anything else is installed. Its environment: RK_STORE (bucket URL), RK_RUN_ID, RK_ROOT
(the VM's scratch directory), RK_PROVIDER. Only `self-delete` must work with a bare
python3: it imports nothing outside the standard library.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"vm_agent: {name} is not set")
    return value


_STORE = None


def _store():
    global _STORE
    if _STORE is None:  # one client per process: commands may be chained (see main)
        from .storage import open_store

        _STORE = open_store(_env("RK_STORE"))
    return _STORE


def _prefix() -> str:
    return f"runs/{_env('RK_RUN_ID')}"


def _log_path() -> Path:
    return Path(_env("RK_ROOT")) / "run.log"


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_status(phase: str, **fields) -> None:
    status = {"run_id": _env("RK_RUN_ID"), "phase": phase, "updated_at": _stamp(),
              "host": socket.gethostname(), **fields}
    _store().write_json(f"{_prefix()}/status.json", status)


def push_log() -> None:
    log = _log_path()
    if log.exists():
        _store().put_file(log, f"{_prefix()}/logs/run.log")


def heartbeat() -> None:
    store = _store()
    store.put_bytes(f"{_prefix()}/heartbeat", f"{time.time():.3f}\n".encode())
    push_log()


def get_bundle(key: str, dest: str) -> None:
    from .bundle import extract_bundle

    archive = Path(_env("RK_ROOT")) / "bundle.tar.gz"
    _store().get_file(key, archive)
    n = extract_bundle(archive, Path(dest))
    print(f"researchkit: unpacked {n} files of {key}", flush=True)


def get_data(dest: str) -> None:
    from .storage.transfer import pull_tree

    stats = pull_tree(_store(), f"{_prefix()}/data", Path(dest))
    print(f"researchkit: fetched {stats.files} data files ({stats.bytes} bytes)", flush=True)


def push_results(results_dir: str) -> None:
    """Upload results (and packs of the small ones), then results.manifest.json last: its
    presence means 'complete'."""
    from .storage.transfer import put_results

    manifest, stats = put_results(_store(), Path(results_dir), _prefix(), Path(_env("RK_ROOT")) / "packs")
    _store().write_json(f"{_prefix()}/results.manifest.json", {"run_id": _env("RK_RUN_ID"), **manifest})
    print(f"researchkit: uploaded {stats.files} result files ({stats.bytes} bytes, "
          f"{len(manifest['files'])} in manifest, {len(manifest['packs'])} packs)")


def finish(stage: str, cmd_rc: str, cause: str) -> None:
    """The EXIT trap's report: upload the last log, then the final status."""
    rc = int(cmd_rc) if cmd_rc not in ("", None) else None
    if stage == "DONE":  # the script reached its end: the command's own result decides
        cause = cause or "exit"
        phase = "DONE" if cause == "exit" and rc == 0 else "FAILED"
    else:
        phase = "FAILED"
        cause = {"BOOT": "boot_error", "SETUP": "boot_error", "UPLOAD": "upload_error"}.get(stage) or cause or "terminated"
    msg = {"exit": f"command exited {rc}", "timeout": "command ran past its deadline",
           "boot_error": f"setup failed during {stage}", "upload_error": "results upload failed",
           "terminated": f"stopped during {stage}"}.get(cause, cause)
    print(f"researchkit: {phase} ({msg})", flush=True)
    try:
        push_log()
    finally:
        write_status(phase, exit_code=rc, cause=cause, stage=stage, message=msg)


# --- self-delete: standard library only ---------------------------------------------
METADATA = os.environ.get("RK_METADATA_URL", "http://metadata.google.internal/computeMetadata/v1")
COMPUTE_API = os.environ.get("RK_COMPUTE_API", "https://compute.googleapis.com/compute/v1")


def _metadata(path: str) -> str:
    import urllib.request

    req = urllib.request.Request(f"{METADATA}/{path}", headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def self_delete_gce() -> None:
    """Delete this instance with the metadata server's token: no gcloud on the image needed."""
    import urllib.request

    name = _metadata("instance/name")
    zone = _metadata("instance/zone").rsplit("/", 1)[-1]
    project = _metadata("project/project-id")
    token = json.loads(_metadata("instance/service-accounts/default/token"))["access_token"]
    url = f"{COMPUTE_API}/projects/{project}/zones/{zone}/instances/{name}"
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                print(f"researchkit: deleting instance {name} ({r.status})", flush=True)
                return
        except Exception as e:  # noqa: BLE001 - keep trying: a running VM costs money
            print(f"researchkit: self-delete attempt {attempt + 1} failed: {e}", file=sys.stderr, flush=True)
            time.sleep(2 ** attempt)
    raise SystemExit("researchkit: self-delete failed; the deadline (maxRunDuration) will delete the VM")


def self_delete_local() -> None:
    record = os.environ.get("RK_LOCAL_INSTANCE")
    if record:
        Path(record).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """Run one command, or several separated by `--` (one Python start for all: on a small VM
    each start costs a fraction of a second)."""
    if "--" in argv:
        i = argv.index("--")
        return main(argv[:i]) or main(argv[i + 1:])
    if not argv:
        print("usage: vm_agent status|heartbeat|get-bundle|get-data|push-results|finish|self-delete [-- ...]",
              file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "status":
        write_status(args[0])
    elif cmd == "heartbeat":
        heartbeat()
    elif cmd == "get-bundle":
        get_bundle(args[0], args[1])
    elif cmd == "get-data":
        get_data(args[0])
    elif cmd == "push-results":
        push_results(args[0])
    elif cmd == "finish":
        finish(*args)
    elif cmd == "self-delete":
        {"gce": self_delete_gce, "local": self_delete_local}[args[0]]()
    else:
        print(f"vm_agent: unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
