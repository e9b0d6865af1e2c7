"""Autoencoder training throughput on this machine: CPU-sized vs paper-sized model.

Times full training steps (forward, SSIM + feature MSE + moment-matching loss,
backward, Adam step) on random tensors, and prints samples/s for each config
side by side, with the torch thread count and the configs. A script, not a test::

    python benchmarks/bench_training.py                # cpu and paper presets, 1 and all threads
    python benchmarks/bench_training.py --threads 2 --steps 10 --configs cpu
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict

import torch

from bcfeat.autoencoder.losses import LossWeights, autoencoder_loss
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder
from bcfeat.training.device import resolve_device

PRESETS = {"cpu": AEConfig.cpu, "paper": AEConfig.paper, "tiny": AEConfig.tiny}


def bench(cfg: AEConfig, batch_size: int, steps: int, warmup: int, device: torch.device, seed: int = 0) -> dict:
    """Seconds per training step and samples/s for one config on random data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.tanh(torch.randn(batch_size, cfg.in_channels, cfg.roi_size, cfg.roi_size, generator=g)).to(device)
    crops = torch.rand(batch_size, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    # Two domains so the alignment term is part of the cost.
    domain = (torch.arange(batch_size) % 2).to(device)
    torch.manual_seed(seed)
    model = CrossDomainAutoencoder(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = autoencoder_loss(out.latent, out.features, out.image, x, crops, domain, weights=LossWeights())
        loss.total.backward()
        opt.step()
        return float(loss.total.detach())

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "s_per_step": median,
        "samples_per_s": batch_size / median,
        "best_samples_per_s": batch_size / min(times),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="cpu,paper", help="comma-separated presets: " + ", ".join(PRESETS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per config (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", default=None,
                   help="comma-separated torch thread counts to compare (default: 1 and torch's default)")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, default_threads}))
    device = resolve_device(args.device)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown presets {unknown}; choose from {sorted(PRESETS)}")

    print(f"torch {torch.__version__} | device {device} | default threads {default_threads} | "
          f"{platform.processor() or platform.machine()} | batch {args.batch_size} | "
          f"{args.steps} timed steps (median) after {args.warmup} warm-up")
    configs = {n: PRESETS[n]() for n in names}
    columns = {}
    for t in threads:
        torch.set_num_threads(t)
        for n, c in configs.items():
            columns[f"{n} @{t}t"] = bench(c, args.batch_size, args.steps, args.warmup, device)
    torch.set_num_threads(default_threads)

    width = max(14, *(len(k) + 2 for k in columns))
    print()
    print(f"{'':<20}" + "".join(f"{k:>{width}}" for k in columns))
    for key, fmt in [("params_M", "{:.2f}"), ("s_per_step", "{:.3f}"), ("samples_per_s", "{:.1f}"),
                     ("best_samples_per_s", "{:.1f}")]:
        print(f"{key:<20}" + "".join(f"{fmt.format(r[key]):>{width}}" for r in columns.values()))
    print()
    for n, c in configs.items():
        d = asdict(c)
        print(f"{n}: " + ", ".join(f"{k}={v}" for k, v in d.items()))


if __name__ == "__main__":
    main()
