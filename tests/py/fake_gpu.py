"""A GPU for machines that have none: a fake `nvidia-smi` (put on a fake VM's PATH) and a tiny
fake `torch` package (put in the project, where the run's python finds it).

nvidia-smi answers the two queries researchkit makes, in the real tool's formats: the CSV of
`--query-gpu=name,driver_version,memory.total --format=csv,noheader`, and `-q`'s "Driver
Version : …" / "CUDA Version : …" lines; with no device it prints "No devices were found" and
exits 6, as the real one does. The fake torch reports CUDA as real torch does: available when
nvidia-smi shows a device and the driver's CUDA version is at least the one torch was built for
(torch.version.cuda), and it runs the one CUDA operation researchkit's check makes.
"""

from __future__ import annotations

from pathlib import Path

DRIVERS = {  # state -> (devices, driver version, the CUDA version the driver supports)
    "ok": (["NVIDIA L4"], "580.65.06", "12.9"),
    "two": (["NVIDIA L4", "NVIDIA L4"], "580.65.06", "12.9"),
    "old-driver": (["NVIDIA L4"], "470.256.02", "11.4"),
}


def nvidia_smi(state: str) -> str:
    """The script of a fake nvidia-smi: a state of DRIVERS, or "no-device"."""
    if state == "no-device":
        return "#!/bin/sh\necho 'No devices were found'\nexit 6\n"
    devices, driver, cuda = DRIVERS[state]
    csv = "\n".join(f"{name}, {driver}, 23034 MiB" for name in devices)
    products = "\n".join(f"GPU 00000000:00:0{i}.0\n    Product Name                          : {name}"
                         for i, name in enumerate(devices, 3))
    return f"""#!/bin/sh
case "$*" in
  *--query-gpu*) printf '%s\\n' '{csv}' ;;
  *-q*) printf '%s\\n' 'Driver Version                            : {driver}' \\
          'CUDA Version                              : {cuda}' 'Attached GPUs                             : {len(devices)}' \\
          '{products}' ;;
  *) printf '%s\\n' '| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda} |' ;;
esac
"""


FAKE_TORCH = '''"""A stand-in for torch in the tests: the CUDA queries researchkit's GPU check makes."""
import re
import subprocess

__version__ = "2.5.1+cu124"


class version:
    cuda = "12.4"


def _smi(*args):
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True)
    except FileNotFoundError:
        return ""
    return r.stdout if r.returncode == 0 else ""


def _ver(text):
    return tuple(int(p) for p in re.findall(r"\\d+", text)[:2])


class cuda:
    @staticmethod
    def device_count():
        return len([line for line in _smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader").splitlines() if line])

    @staticmethod
    def is_available():
        m = re.search(r"CUDA Version\\s*:\\s*([\\d.]+)", _smi("-q"))
        return cuda.device_count() > 0 and bool(m) and _ver(m.group(1)) >= _ver(version.cuda)

    @staticmethod
    def get_device_name(i=0):
        return _smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader").splitlines()[i].split(",")[0]


class _Tensor:
    def __init__(self, values):
        self.values = values

    def __mul__(self, k):
        return _Tensor([v * k for v in self.values])

    def sum(self):
        return _Tensor([sum(self.values)])

    def item(self):
        return self.values[0]


def ones(n, device="cpu"):
    if device == "cuda" and not cuda.is_available():
        raise RuntimeError("Found no NVIDIA driver on your system.")
    return _Tensor([1.0] * n)
'''


def add_fake_torch(project: Path) -> None:
    """torch/ in the project: the run's python, started in the project, imports it."""
    (project / "torch").mkdir()
    (project / "torch" / "__init__.py").write_text(FAKE_TORCH)
