"""Seconds per training step: EssNet vs the plain CycleGAN (same networks, seg_branch=False), plus parameter counts.

Usage:
    python bench/models_step.py                      # CPU (and CUDA when available), 64x64 and 128x128
    python bench/models_step.py --sizes 64 128 256 --steps 10 --device cuda --compile

On CUDA the model runs bf16 autocast + channels_last + fused Adam (EssNetConfig.amp); CPU runs plain fp32.
"""
from __future__ import annotations

import argparse
import time

import torch

from models.essnet import EssNet, EssNetConfig
from models.networks import NLayerDiscriminator, ResnetGenerator, count_parameters


def seconds_per_step(cfg: EssNetConfig, size: int, device: torch.device, steps: int, warmup: int) -> float:
    model = EssNet(cfg, device)
    g = torch.Generator().manual_seed(0)
    real_A = torch.rand(cfg.batch_size, 1, size, size, generator=g) * 2 - 1
    real_B = torch.rand(cfg.batch_size, 1, size, size, generator=g) * 2 - 1
    mask_A = (torch.rand(cfg.batch_size, size, size, generator=g) > 0.7).long()
    real_A, real_B, mask_A = real_A.to(device), real_B.to(device), mask_A.to(device)
    for _ in range(warmup):
        model.optimize_parameters(real_A, mask_A, real_B)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.optimize_parameters(real_A, mask_A, real_B)  # syncs each step (loss .tolist())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def paper_parameter_counts() -> dict[str, int]:
    G = count_parameters(ResnetGenerator(1, 1, 64, 9))
    S = count_parameters(ResnetGenerator(1, 2, 64, 9, tanh=False))
    D = count_parameters(NLayerDiscriminator(1, 64, 3))
    return {"G_A": G, "G_B": G, "S": S, "D_A": D, "D_B": D, "all": 2 * G + S + 2 * D, "G_A+G_B+S": 2 * G + S,
            "G_A+S": G + S, "cyclegan_all": 2 * G + 2 * D}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--n-blocks", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    counts = paper_parameter_counts()
    print("paper config (ngf 64, 9 blocks, 1-channel, 2 classes) parameters:")
    for k, v in counts.items():
        print(f"  {k:>14}: {v / 1e6:7.3f} M")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devices = [torch.device(args.device)]
    print(f"\n{'device':>6} {'size':>5} {'ngf':>4} {'batch':>5} {'essnet s/step':>14} {'cyclegan s/step':>16} {'ratio':>6}")
    for device in devices:
        for size in args.sizes:
            base = dict(ngf=args.ngf, ndf=args.ngf, n_blocks=args.n_blocks, batch_size=args.batch_size,
                        compile=args.compile)
            t_ess = seconds_per_step(EssNetConfig(**base), size, device, args.steps, args.warmup)
            t_cyc = seconds_per_step(EssNetConfig(**base, seg_branch=False), size, device, args.steps, args.warmup)
            print(f"{device.type:>6} {size:>5} {args.ngf:>4} {args.batch_size:>5} {t_ess:14.4f} {t_cyc:16.4f}"
                  f" {t_ess / t_cyc:6.2f}", flush=True)


if __name__ == "__main__":
    main()
