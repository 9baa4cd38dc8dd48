"""Run a GCE look-alike on this machine: fake-gcs-server, our fake Compute API, and fake VMs
that boot from the startup scripts they are given (in network namespaces when run as root
with bwrap and ip, else as plain processes). Prints the environment to use, serves until
Ctrl-C, and cleans up.

  .venv/bin/python tests/py/emulate_gce.py [--project emu-project]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulators import FakeGCS  # noqa: E402
from fake_gce import FakeGCE  # noqa: E402
from fake_vm import GCEVMs, VMNetwork  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default="emu-project")
    args = ap.parse_args()
    reason = VMNetwork.available()
    net = None if reason else VMNetwork(subnet=77)
    host = net.host_ip if net else "127.0.0.1"
    gcs, gce = FakeGCS(host=host), FakeGCE(host=host)
    vms = GCEVMs(gce, Path(tempfile.mkdtemp(prefix="rk-emu-vms-")), {"STORAGE_EMULATOR_HOST": gcs.url}, net)
    import os

    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    from researchkit_py.storage.gcs import gcs_client

    bucket = f"emu-{uuid.uuid4().hex[:8]}"
    gcs_client(args.project).create_bucket(bucket)
    print(f"# fake VMs: {'own network namespaces' if net else 'plain processes (' + reason + ')'}", file=sys.stderr)
    print(f"export STORAGE_EMULATOR_HOST={gcs.url}\nexport RK_GCE_API_ENDPOINT={gce.url}\n"
          f"export GCE_PROJECT={args.project}\nexport RK_BUCKET=gs://{bucket}/researchkit", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        vms.stop()
        gce.stop()
        gcs.stop()
        if net:
            net.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
