"""On the VM, before the command of a run that asked for a GPU: the NVIDIA driver answers
(nvidia-smi) with as many devices as asked for and, where the run's environment has torch,
torch uses CUDA with this driver. Otherwise the run ends FAILED (gpu_unavailable) before its
command starts, with what was found in the log: never a silent CPU run. What was found goes to
<root>/gpu.json, which every later status carries. Standard library only; put in the bucket for
a run that asks for a GPU, where `vm_agent gpu-check WORKDIR MODEL:COUNT WAIT` fetches and runs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from . import protocol

# Run by the run's own python (the first on PATH), in the run's directory.
TORCH_PROBE = """import importlib.util, json
out = {}
if importlib.util.find_spec('torch'):
    import torch
    out = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'available': torch.cuda.is_available()}
    if out['available']:
        out['devices'] = torch.cuda.device_count()
        out['name'] = torch.cuda.get_device_name(0)
        try:
            out['works'] = float((torch.ones(2, device='cuda') * 2).sum().item()) == 4.0
        except Exception as e:
            out['works'], out['error'] = False, str(e).splitlines()[0]
print(json.dumps(out))"""


def _smi(*args: str) -> tuple[int, str]:
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return 127, "nvidia-smi: command not found"
    except subprocess.TimeoutExpired:
        return 124, "nvidia-smi did not answer within 120 s"
    return r.returncode, (r.stdout + r.stderr).strip()


def driver_facts(wait: float) -> tuple[dict, str]:
    """(facts, problem) from nvidia-smi, waiting up to `wait` seconds for a driver still being
    installed; a driver that answers "No devices were found" is not waited for."""
    end, said = time.time() + wait, False
    while True:
        rc, out = _smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
        if rc == 0 and out:
            break
        last = (out.splitlines() or ["no output"])[-1]
        if "No devices were found" in out or time.time() >= end:
            facts = {"nvidia_smi": out[-400:]}
            if rc == 127:
                return facts, "nvidia-smi is not on this VM: its image has no NVIDIA driver"
            return facts, f"nvidia-smi failed (exit {rc}): {last}"
        if not said:
            print(f"researchkit: waiting up to {wait:g} s for the NVIDIA driver ({last})", flush=True)
            said = True
        time.sleep(5)
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    m = re.search(r"CUDA Version\s*:\s*([\d.]+)", _smi("-q")[1])
    return {"devices": [r[0] for r in rows], "memory": rows[0][2] if len(rows[0]) > 2 else "",
            "driver": rows[0][1] if len(rows[0]) > 1 else "", "cuda": m.group(1) if m else ""}, ""


def torch_facts(workdir: str) -> dict:
    """What torch in the run's environment says about CUDA ({} where it has no torch)."""
    python = shutil.which("python") or shutil.which("python3") or "python3"
    try:
        r = subprocess.run([python, "-c", TORCH_PROBE], cwd=workdir, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{python}: {e}"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:2])


def torch_problem(t: dict, d: dict, count: int) -> str:
    if "error" in t and not t.get("available"):
        return f"torch cannot start in the run's environment: {t['error']}"
    v = f"torch {t['torch']}"
    if not t["torch_cuda"]:
        return f"{v} is a CPU-only build; install a CUDA build (PyPI's default torch wheel is one)"
    if d["cuda"] and _version(t["torch_cuda"]) > _version(d["cuda"]):
        return (f"the NVIDIA driver {d['driver']} supports CUDA up to {d['cuda']} but {v} was built for CUDA "
                f"{t['torch_cuda']}: the driver is too old; use an image with a newer driver, or a torch build "
                f"for CUDA {d['cuda']}")
    if not t["available"]:
        return f"{v} (CUDA {t['torch_cuda']}) cannot use the GPU: torch.cuda.is_available() is False"
    if t["devices"] < count:
        return f"{v} sees {t['devices']} GPU(s), the run asked for {count}"
    if not t.get("works"):
        return f"{v} could not run a CUDA operation: {t.get('error', 'wrong result')}"
    return ""


def check(root: Path, workdir: str, asked: str, wait: float) -> None:
    """Exit 1 (SystemExit) unless the GPU asked for ('MODEL:COUNT') is usable."""
    model, _, n = asked.rpartition(":")
    count = int(n)
    print(f"researchkit: GPU check: the run asked for {count} × {model}", flush=True)
    facts, problem = driver_facts(wait)
    if not problem:
        print(f"researchkit: nvidia-smi: {', '.join(facts['devices'])} ({facts['memory']}); driver "
              f"{facts['driver']}, CUDA {facts['cuda'] or 'unknown'}", flush=True)
        if len(facts["devices"]) < count:
            problem = f"nvidia-smi shows {len(facts['devices'])} GPU(s), the run asked for {count}"
    if not problem:
        t = torch_facts(workdir)
        if t:
            facts.update(torch=t.get("torch", ""), torch_cuda=t.get("torch_cuda") or "")
            problem = torch_problem(t, facts, count)
            if not problem:
                print(f"researchkit: torch {t['torch']} (CUDA {t['torch_cuda']}) uses {t['name']}", flush=True)
    facts.update(asked=asked, ok=not problem, problem=problem)
    (Path(root) / protocol.GPU_FACTS).write_text(json.dumps(facts))
    if problem:
        if facts.get("nvidia_smi"):
            print(f"researchkit: nvidia-smi said: {facts['nvidia_smi']}", flush=True)
        print(f"researchkit: GPU unavailable: {problem}; the command does not run", flush=True)
        raise SystemExit(1)
    print("researchkit: GPU ready", flush=True)
