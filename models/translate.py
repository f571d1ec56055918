"""CT slices -> synthetic MR with a trained netG_A; the CT masks travel with their slices unchanged.

Each synthetic slice also gets a quality signal: the Dice between argmax netS(fake_B) and the carried mask, i.e. does
EssNet's own segmentor still find the liver where the CT mask says it is. It is NaN where there is no netS (plain
CycleGAN) or the carried mask is empty (Dice undefined).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint
from models.essnet import EssNet, EssNetConfig
from models.networks import ResnetGenerator

__all__ = ["TranslateOutput", "load_generator", "translate", "quality_filter", "slice_dice"]

Generator = tuple[nn.Module, "nn.Module | None", EssNetConfig]


@dataclass(frozen=True)
class TranslateOutput:
    fake_B: np.ndarray  # float32 [N, S, S] in [-1, 1]
    masks: np.ndarray  # the input CT masks, unchanged (same dtype and bytes)
    has_liver: np.ndarray  # bool [N]: mask.any() per slice
    quality: np.ndarray  # float32 [N]: netS agreement Dice; NaN without netS or with an empty mask


def load_generator(checkpoint_path: str | os.PathLike, device: torch.device | str | None = None) -> Generator:
    """Load netG_A (and netS when the run had one) once, in eval mode, for repeated `translate` calls.

    Args:
        checkpoint_path: a checkpoint.pt written by train_essnet.
        device: default CUDA when available, else CPU.

    Returns:
        (netG_A, netS or None, cfg).

    Raises:
        CheckpointError: missing/unreadable file, or no netG_A in it (names the path).
        ConfigError: the stored config is invalid.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load_checkpoint(checkpoint_path)
    if "config" not in state or "netG_A" not in state:
        raise CheckpointError(f"{checkpoint_path}: not an EssNet checkpoint (no 'config'/'netG_A' entry)")
    cfg = EssNetConfig.from_dict(state["config"])
    netG_A = ResnetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, cfg.n_blocks)
    netG_A.load_state_dict(state["netG_A"])
    netS = None
    if cfg.seg_branch:
        netS = ResnetGenerator(cfg.output_nc, cfg.n_classes, cfg.ngf, cfg.n_blocks, tanh=False)
        netS.load_state_dict(state["netS"])
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for net in (netG_A, netS):
        if net is not None:
            net.to(device, memory_format=memory_format).eval()
    return netG_A, netS, cfg


def slice_dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-slice Dice of bool [N, S, S] arrays; NaN where the target is empty."""
    inter = np.logical_and(pred, target).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * inter / total
    return np.where(target.any(axis=(1, 2)), dice, np.nan).astype(np.float32)


def translate(
    checkpoint_or_model: str | os.PathLike | EssNet | Generator,
    ct_images: np.ndarray,
    ct_masks: np.ndarray,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> TranslateOutput:
    """Translate CT slices to synthetic MR in batches (inference mode; bf16 autocast on CUDA).

    Args:
        checkpoint_or_model: a checkpoint path, a trained EssNet, or the tuple from `load_generator`.
        ct_images: float32 [N, S, S] in [-1, 1].
        ct_masks: [N, S, S] liver masks (0/1), returned unchanged.
        batch_size: slices per forward pass.
        device: used only when loading from a path (a model stays where it is).

    Returns:
        TranslateOutput (fake_B, masks, has_liver, quality).

    Raises:
        ValueError: mismatched or malformed arrays, or batch_size < 1.
        CheckpointError: an unreadable checkpoint path.
    """
    if not isinstance(ct_images, np.ndarray) or ct_images.ndim != 3 or ct_images.shape[1] % 4 or ct_images.shape[2] % 4:
        raise ValueError(f"ct_images must be [N, S, S] with S a multiple of 4, got {getattr(ct_images, 'shape', None)}")
    if getattr(ct_masks, "shape", None) != ct_images.shape:
        raise ValueError(f"ct_masks shape {getattr(ct_masks, 'shape', None)} must equal ct_images shape {ct_images.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(checkpoint_or_model, EssNet):
        netG_A, netS = checkpoint_or_model.netG_A, checkpoint_or_model.netS
    elif isinstance(checkpoint_or_model, tuple):
        netG_A, netS, _ = checkpoint_or_model
    else:
        netG_A, netS, _ = load_generator(checkpoint_or_model, device)
    param = next(netG_A.parameters())
    dev = param.device
    memory_format = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    n = ct_images.shape[0]
    fake_B = np.empty(ct_images.shape, dtype=np.float32)
    pred = np.zeros(ct_images.shape, dtype=bool)
    was_training = [(net, net.training) for net in (netG_A, netS) if net is not None]
    for net, _ in was_training:
        net.eval()
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, n, batch_size):
                real_A = torch.from_numpy(np.ascontiguousarray(ct_images[start : start + batch_size], dtype=np.float32))
                real_A = real_A.unsqueeze(1).to(dev, non_blocking=True).contiguous(memory_format=memory_format)
                fake = netG_A(real_A)  # [b, 1, S, S]
                fake_B[start : start + batch_size] = fake[:, 0].float().clamp_(-1, 1).cpu().numpy()
                if netS is not None:
                    pred[start : start + batch_size] = (netS(fake).argmax(1) > 0).cpu().numpy()
    finally:
        for net, training in was_training:
            net.train(training)
    target = np.asarray(ct_masks) > 0
    has_liver = target.any(axis=(1, 2))
    quality = slice_dice(pred, target) if netS is not None else np.full(n, np.nan, dtype=np.float32)
    return TranslateOutput(fake_B=fake_B, masks=ct_masks, has_liver=has_liver, quality=quality)


def quality_filter(
    has_liver: np.ndarray, quality: np.ndarray, *, min_quality: float | None = None, require_liver: bool = True
) -> np.ndarray:
    """Which synthetic slices to keep.

    Args:
        has_liver: bool [N] (TranslateOutput.has_liver).
        quality: float32 [N] (TranslateOutput.quality).
        min_quality: keep only slices with quality >= this (NaN quality fails it, so leave None for a generator
            without netS); None: no agreement filter.
        require_liver: keep only slices whose carried mask shows liver.

    Returns:
        bool [N] keep mask.

    Raises:
        ValueError: mismatched lengths or min_quality outside [0, 1].
    """
    has_liver, quality = np.asarray(has_liver, dtype=bool), np.asarray(quality, dtype=np.float32)
    if has_liver.shape != quality.shape or has_liver.ndim != 1:
        raise ValueError(f"has_liver {has_liver.shape} and quality {quality.shape} must be equal-length 1-D arrays")
    keep = has_liver.copy() if require_liver else np.ones_like(has_liver)
    if min_quality is not None:
        if not 0.0 <= min_quality <= 1.0:
            raise ValueError(f"min_quality must be in [0, 1], got {min_quality!r}")
        with np.errstate(invalid="ignore"):
            keep &= quality >= min_quality
    return keep
