"""Train EssNet (or the plain CycleGAN ablation) once on unpaired CT slices (with masks) and MR slices (no masks).

The loop is resumable bit-for-bit on CPU: the checkpoint holds every network, both optimizers, both image pools, the
batch sampler's RNG state, the step and the config, so N straight steps equal k steps + resume + N-k steps.

Alignment score (alignment.json): global Dice (pooled over all held-out CT slices) between argmax netS(netG_A(ct))
and the CT liver mask. It needs netS, so for the plain CycleGAN it is None and the caller (grid/) measures alignment
independently, e.g. with a U-Net trained on real MR applied to the synthetic slices.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from datasets.errors import ConfigError
from models.checkpoint import load_checkpoint, save_checkpoint
from models.essnet import EssNet, EssNetConfig

__all__ = ["EssNetResult", "train_essnet", "alignment_dice", "default_device"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOSSES_NAME = "losses.csv"
ALIGNMENT_NAME = "alignment.json"
_RUNTIME_ONLY = ("compile", "amp")  # config fields that may differ between a run and its resumption


@dataclass(frozen=True)
class EssNetResult:
    """What one training run left behind."""

    out_dir: Path
    checkpoint_path: Path
    losses_path: Path
    alignment_path: Path
    steps: int  # optimisation steps completed (= cfg.total_steps)
    resumed_from: int  # 0 for a fresh run
    alignment_dice: float | None  # None: no netS (CycleGAN) or no held-out CT given
    last_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_images(name: str, x: np.ndarray, size: int | None = None) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[0] == 0 or x.shape[1] != x.shape[2]:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name} must be a non-empty array [N, S, S], got {shape}")
    if x.shape[1] % 4:
        raise ValueError(f"{name}: slice size {x.shape[1]} must be a multiple of 4")
    if size is not None and x.shape[1] != size:
        raise ValueError(f"{name}: slice size {x.shape[1]} differs from ct_images' {size}")


def alignment_dice(model: EssNet, ct_images: np.ndarray, ct_masks: np.ndarray, batch_size: int = 32) -> float | None:
    """Global Dice of argmax netS(netG_A(ct)) against the CT liver masks, pooled over all slices.

    Args:
        model: a trained EssNet.
        ct_images: float32 [N, S, S] in [-1, 1].
        ct_masks: [N, S, S] 0/1.
        batch_size: slices per forward pass.

    Returns:
        Dice in [0, 1]; 1.0 if masks and predictions are both empty everywhere; None if the model has no netS.
    """
    if model.netS is None:
        return None
    inter = total = 0
    for start in range(0, len(ct_images), batch_size):
        real_A = torch.from_numpy(np.ascontiguousarray(ct_images[start : start + batch_size], dtype=np.float32))
        _, seg = model.synthesize(real_A)
        pred = seg.argmax(1).cpu().numpy() > 0  # [b, S, S]
        target = np.asarray(ct_masks[start : start + batch_size]) > 0
        inter += int(np.logical_and(pred, target).sum())
        total += int(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def _rewrite_losses_csv(path: Path, keep_until: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= keep_until]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def train_essnet(
    ct_images: np.ndarray,
    ct_masks: np.ndarray,
    mr_images: np.ndarray,
    cfg: EssNetConfig,
    out_dir: str | os.PathLike,
    *,
    val_ct_images: np.ndarray | None = None,
    val_ct_masks: np.ndarray | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
    log_every: int = 50,
    checkpoint_every: int = 500,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> EssNetResult:
    """Train for cfg.total_steps steps of random unpaired batches; checkpoint, log, and score alignment.

    Args:
        ct_images: float32 [N, S, S] CT slices in [-1, 1] (domain A).
        ct_masks: uint8 [N, S, S] CT liver masks (0/1), one per CT slice.
        mr_images: float32 [M, S, S] MR slices in [-1, 1] (domain B); no MR mask is ever used.
        cfg: the run's configuration (cfg.seg_branch=False trains the plain CycleGAN).
        out_dir: local directory for checkpoint.pt, losses.csv and alignment.json.
        val_ct_images: held-out CT [V, S, S] for the alignment score (optional).
        val_ct_masks: their masks [V, S, S].
        resume: continue from out_dir/checkpoint.pt when it exists (False: start over and overwrite).
        device: default CUDA when available, else CPU.
        num_threads: torch CPU threads (pass the CPUs this process was given); None leaves torch's setting.
        log_every: write a losses.csv row (the current step's losses) and call on_log every this many steps.
        checkpoint_every: save a checkpoint every this many steps (and always at the end).
        on_log: called as on_log(step, losses) at each logged step (step is 1-based).

    Returns:
        EssNetResult with paths, steps, the alignment Dice (None without netS or held-out CT) and the last losses.

    Raises:
        ValueError: arrays of the wrong shape, or mismatched images and masks (message names the argument).
        ConfigError: resuming a checkpoint written with a different configuration (names the field).
        NonFiniteLossError: a loss term became NaN or inf (names the term and step).
    """
    t0 = time.perf_counter()
    _check_images("ct_images", ct_images)
    size = ct_images.shape[1]
    _check_images("mr_images", mr_images, size)
    if getattr(ct_masks, "shape", None) != ct_images.shape:
        raise ValueError(f"ct_masks shape {getattr(ct_masks, 'shape', None)} must equal ct_images shape {ct_images.shape}")
    if (val_ct_images is None) != (val_ct_masks is None):
        raise ValueError("val_ct_images and val_ct_masks must be given together")
    if val_ct_images is not None:
        _check_images("val_ct_images", val_ct_images, size)
        if getattr(val_ct_masks, "shape", None) != val_ct_images.shape:
            raise ValueError(f"val_ct_masks shape {getattr(val_ct_masks, 'shape', None)} must equal {val_ct_images.shape}")
    for name, value in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads!r}")
        torch.set_num_threads(num_threads)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, losses_path, align_path = out / CHECKPOINT_NAME, out / LOSSES_NAME, out / ALIGNMENT_NAME
    device = torch.device(device) if device is not None else default_device()

    model = EssNet(cfg, device)
    sampler = torch.Generator().manual_seed(cfg.seed + 1000)  # batch draws; never the global RNG
    resumed_from = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved, now = state["config"], cfg.to_dict()
        for key in now:
            if key not in _RUNTIME_ONLY and saved.get(key) != now[key]:
                raise ConfigError(
                    f"{ckpt_path}: config field {key!r} was {saved.get(key)!r}, now {now[key]!r}; "
                    "pass resume=False to start over"
                )
        model.load_state_dict(state)
        sampler.set_state(state["sampler_rng"])
        resumed_from = model.step
        _rewrite_losses_csv(losses_path, resumed_from)
        log.info("resumed %s at step %d", ckpt_path, resumed_from)
    elif losses_path.exists():
        losses_path.unlink()

    def save() -> None:
        state = model.state_dict()
        state["sampler_rng"] = sampler.get_state()
        save_checkpoint(ckpt_path, state)  # temp name + os.replace

    ct_t = torch.from_numpy(np.ascontiguousarray(ct_images, dtype=np.float32))
    mask_t = torch.from_numpy(np.ascontiguousarray(ct_masks, dtype=np.uint8))
    mr_t = torch.from_numpy(np.ascontiguousarray(mr_images, dtype=np.float32))
    n_ct, n_mr, batch = ct_t.shape[0], mr_t.shape[0], cfg.batch_size

    losses: dict[str, float] = {}
    writer_file = None
    try:
        while model.step < cfg.total_steps:
            idx_A = torch.randint(0, n_ct, (batch,), generator=sampler)  # unpaired: independent draws
            idx_B = torch.randint(0, n_mr, (batch,), generator=sampler)
            losses = model.optimize_parameters(ct_t[idx_A].unsqueeze(1), mask_t[idx_A], mr_t[idx_B].unsqueeze(1))
            step = model.step
            if step % log_every == 0 or step == cfg.total_steps:
                if writer_file is None:
                    new = not losses_path.exists() or losses_path.stat().st_size == 0
                    writer_file = losses_path.open("a", newline="")
                    writer = csv.writer(writer_file)
                    if new:
                        writer.writerow(["step", *losses])
                writer.writerow([step, *(f"{v:.6g}" for v in losses.values())])
                writer_file.flush()
                if on_log is not None:
                    on_log(step, losses)
                log.info("step %d/%d %s", step, cfg.total_steps, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
            if step % checkpoint_every == 0 and step < cfg.total_steps:
                save()
    finally:
        if writer_file is not None:
            writer_file.close()
    save()

    score = None
    if val_ct_images is not None and len(val_ct_images) > 0:
        score = alignment_dice(model, val_ct_images, val_ct_masks)
    report = {
        "generator": "essnet" if cfg.seg_branch else "cyclegan",
        "steps": model.step,
        "seg_alignment_dice": score,
        "n_val_slices": 0 if val_ct_images is None else int(len(val_ct_images)),
        "method": "global Dice of argmax netS(netG_A(ct)) vs CT liver mask over held-out CT; "
        "null without netS (plain CycleGAN) or without held-out CT",
    }
    tmp = align_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, align_path)
    return EssNetResult(
        out_dir=out,
        checkpoint_path=ckpt_path,
        losses_path=losses_path,
        alignment_path=align_path,
        steps=model.step,
        resumed_from=resumed_from,
        alignment_dice=score,
        last_losses=losses,
        seconds=time.perf_counter() - t0,
    )
