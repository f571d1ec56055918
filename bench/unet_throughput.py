"""U-Net training throughput (images/s) per input size and width: CPU fp32, and on CUDA fp32 vs bf16 + channels_last.

One timed step is exactly what `models.train_unet` does per step: batch gather from in-memory tensors, on-tensor
augmentation, forward (autocast when asked), Dice + CE loss, backward, AdamW (fused on CUDA).

Usage:
    python bench/unet_throughput.py                              # CPU (and CUDA when available), sizes 64 128 256
    python bench/unet_throughput.py --device cuda --steps 30 --compile
    python bench/unet_throughput.py --device cpu --threads 2 --bases 16 --sizes 64 128

Prints one row per (device, mode, base, size) and, on CUDA, the bf16+channels_last / fp32 speed-up per row.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from models.losses import dice_ce_loss
from models.networks import count_parameters
from models.train_unet import augment_batch
from models.unet import UNet


def images_per_second(base: int, size: int, device: torch.device, *, batch_size: int, steps: int, warmup: int,
                      amp: bool, channels_last: bool, compile: bool, augment: bool = True, n_slices: int = 64) -> float:
    """Train a fresh U-Net (depth 4) on random data for warmup + steps steps; return timed images per second."""
    on_cuda = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = UNet(1, 2, base=base, depth=4).to(device, memory_format=fmt)
    if compile:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, **({"fused": True} if on_cuda else {}))
    gen = torch.Generator().manual_seed(1)
    noise_gen = torch.Generator(device=device).manual_seed(2)
    images = (torch.rand(n_slices, size, size, generator=gen) * 2 - 1).to(device)
    masks = (torch.rand(n_slices, size, size, generator=gen) > 0.7).to(torch.uint8).to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda and amp else contextlib.nullcontext

    def step() -> torch.Tensor:
        idx = torch.randint(0, n_slices, (batch_size,), generator=gen).to(device)
        x, y = images[idx].unsqueeze(1), masks[idx].long()
        if augment:
            x, y = augment_batch(x, y, gen, noise_gen)
        with autocast():
            logits = model(x.contiguous(memory_format=fmt))
        loss = dice_ce_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    for _ in range(warmup):
        step()
    if on_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    torch.stack(losses).sum().item()  # one sync at the end, as train_unet checks losses in blocks on CUDA
    if on_cuda:
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--bases", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, and CUDA too when available")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 16 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 10 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the U-Net (CUDA modes)")
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
        torch.backends.cudnn.benchmark = True  # as train_unet does on CUDA
    for base in args.bases:
        print(f"UNet base {base} depth 4: {count_parameters(UNet(1, 2, base=base, depth=4)):,} parameters")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'device':6} {'mode':18} {'base':>4} {'size':>4} {'batch':>5} {'img/s':>9} {'ratio':>7}")
    for device in devices:
        on_cuda = device.type == "cuda"
        batch = args.batch_size or (16 if on_cuda else 8)
        steps = args.steps or (30 if on_cuda else 3)
        warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
        modes = [("fp32", False, False, False)]
        if on_cuda:
            modes.append(("bf16+channels_last", True, True, False))
            if args.compile:
                modes.append(("bf16+cl+compile", True, True, True))
        for base in args.bases:
            for size in args.sizes:
                reference = None
                for name, amp, cl, comp in modes:
                    ips = images_per_second(base, size, device, batch_size=batch, steps=steps, warmup=warmup, amp=amp,
                                            channels_last=cl, compile=comp, augment=not args.no_augment)
                    reference = reference or ips
                    ratio = f"{ips / reference:6.2f}x" if on_cuda else ""
                    print(f"{device.type:6} {name:18} {base:4d} {size:4d} {batch:5d} {ips:9.1f} {ratio:>7}", flush=True)
    if len(args.sizes) > 1:
        print("(ratio: speed-up over fp32 on the same device, base and size)")


if __name__ == "__main__":
    main()
