"""A small torch experiment: how much faster one CUDA GPU trains an MLP than the CPU does.

Trains on CUDA when torch sees a GPU, else on the CPU, and records the device in metrics.json
(`device`, and `gpu.count`, `gpu.name`, `gpu.speedup` when a GPU was used). Without torch it
records the abort (READ then says INCONCLUSIVE). Writes to --out (default $RESULTS_DIR).
"""

import argparse
import json
import os
import time

FEATURES, HIDDEN, BATCH = 64, 256, 4096


def make_data(torch, n, seed):
    """Points in 64 dimensions; the class: whether the first 8 coordinates lie outside the
    sphere that splits them in half (a median of chi-square with 8 degrees of freedom)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = (x[:, :8].pow(2).sum(1) > 7.344).long()
    return x, y


def model(torch):
    nn = torch.nn
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 2))


def train(torch, x, y, device, steps, seed):
    """(trained model, seconds per step after a warm-up step)."""
    torch.manual_seed(seed)
    net = model(torch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = x.to(device), y.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    start = 0.0
    for step in range(steps + 1):
        idx = torch.randint(0, x.shape[0], (BATCH,), device=device, generator=g)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0:  # the first step pays for CUDA's start-up: not timed
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
    return net, (time.perf_counter() - start) / steps


def accuracy(torch, net, x, y, device):
    with torch.no_grad():
        return (net(x.to(device)).argmax(1) == y.to(device)).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("RESULTS_DIR", "results"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        import torch
    except ImportError:
        metrics = {"aborted": True, "reason": "torch is not installed (pip install -r requirements.txt)",
                   "device": "none"}
    else:
        x, y = make_data(torch, 200_000, args.seed)
        (xt, yt), (x, y) = (x[:20_000], y[:20_000]), (x[20_000:], y[20_000:])
        cuda = torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
        net, step_seconds = train(torch, x, y, device, args.steps, args.seed)
        metrics = {"device": device, "torch": torch.__version__, "accuracy": round(accuracy(torch, net, xt, yt, device), 4),
                   f"{device}_seconds_per_step": round(step_seconds, 5)}
        if cuda:
            _, cpu_step = train(torch, x, y, "cpu", 20, args.seed)
            metrics["cpu_seconds_per_step"] = round(cpu_step, 5)
            metrics["gpu"] = {"count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
                              "cuda": torch.version.cuda, "speedup": round(cpu_step / step_seconds, 2)}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
