"""Apply a trained U-Net to whole volumes and write the result as CHAOS-format PNG masks.

The same `predict_volume` scores the validation and test patients during training (`models.train_unet`) and
serves `essgrid predict`, so a mask written to disk is exactly the one that was scored.

From slices to a native mask: the net sees the preprocessed S x S slices; the liver probability (softmax of class 1)
is resized back to the native H x W linearly and cut at 0.5 (`datasets.preprocess.resize_to_native`). At S x S that
cut is the argmax of the two logits; resizing the probability rather than the hard mask gives smoother edges at
native resolution at no extra cost. With more than two classes the hard argmax == 1 mask is resized (nearest).

Exported model file (`unet_export`, read by `load_unet`): a `models.checkpoint` dict with
{"kind": "essgrid-unet", "unet": UNet constructor args, "model": the selected (best on validation) weights,
"size": S, "modality", "sequence", "config": the training config, "best_step", "val_dice"}.

PNG masks (`write_chaos_masks`), named like CHAOS's CT Ground folder: `liver_GT_000.png`, `liver_GT_001.png`, ...
(slice k = k-th name in natural order, zero-padded to 3 digits, more when Z > 1000):
- CT: 1-bit PNG (mode "1"), liver = 1 (255 when read as 8-bit), as CHAOS's `Ground/liver_GT_NNN.png`.
- MR: 8-bit grey PNG, liver = 63, everything else 0, as CHAOS's MR ground truth and submissions code the liver.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image

from datasets.errors import EssgridError
from datasets.preprocess import resize_to_native
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.unet import UNet

__all__ = ["EXPORT_KIND", "MR_LIVER_VALUE", "predict_probs", "predict_volume", "unet_export", "load_unet",
           "write_chaos_masks"]

log = logging.getLogger(__name__)

EXPORT_KIND = "essgrid-unet"
MR_LIVER_VALUE = 63  # CHAOS MR grey-level code of the liver (55-70 band)
LIVER_CLASS = 1


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_probs(model: UNet, images: np.ndarray | torch.Tensor, *, batch_size: int = 16,
                  amp: bool = True, channels_last: bool = True) -> torch.Tensor:
    """Class probabilities of every slice of one volume, at the preprocessed size.

    The model is put in eval mode (batch-norm running statistics) and its previous mode restored afterwards, so the
    training loop can call this between steps.

    Args:
        model: a UNet (any device; the images are moved there).
        images: float [Z, S, S] in [-1, 1] (numpy or tensor).
        batch_size: slices per forward pass.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels_last input on CUDA (ignored on CPU).

    Returns:
        float32 tensor [Z, C, S, S] of softmax probabilities, on the CPU.

    Raises:
        ValueError: images not [Z, S, S], or batch_size < 1.
    """
    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32) if isinstance(images, np.ndarray) else images)
    if x_all.ndim != 3:
        raise ValueError(f"images must be [Z, S, S], got shape {tuple(x_all.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    device = _model_device(model)
    on_cuda = device.type == "cuda"
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if on_cuda and amp
                else contextlib.nullcontext())
    fmt = torch.channels_last if on_cuda and channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start:start + batch_size, None].to(device, torch.float32, non_blocking=True)  # [b, 1, S, S]
            with autocast:
                logits = model(x.contiguous(memory_format=fmt))  # [b, C, S, S]
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros((0, model.out_channels, *x_all.shape[1:]), dtype=torch.float32)
    return torch.cat(out)


def predict_volume(model: UNet, images: np.ndarray | torch.Tensor, native_shape: Sequence[int], *,
                   batch_size: int = 16, amp: bool = True, channels_last: bool = True) -> np.ndarray:
    """Liver mask of one volume at native resolution.

    Args:
        model: a trained UNet (class 1 = liver).
        images: float [Z, S, S] preprocessed slices in [-1, 1].
        native_shape: (H, W) of the native slices.
        batch_size: slices per forward pass.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels_last on CUDA (ignored on CPU).

    Returns:
        bool [Z, H, W] liver mask (see the module docstring for how S x S becomes H x W).

    Raises:
        ValueError: images not [Z, S, S] or a bad native_shape.
    """
    probs = predict_probs(model, images, batch_size=batch_size, amp=amp, channels_last=channels_last)
    native = tuple(int(v) for v in native_shape)
    if probs.shape[0] == 0:
        return np.zeros((0, *native), dtype=bool)
    if probs.shape[1] == 2:
        return resize_to_native(probs[:, LIVER_CLASS].numpy(), native)
    return resize_to_native((probs.argmax(1) == LIVER_CLASS).numpy(), native)


def unet_export(checkpoint: dict[str, Any], file: str | os.PathLike | BinaryIO, *, size: int | None = None,
                modality: str = "MR", sequence: str = "T2SPIR") -> None:
    """Write the selected (best on validation) U-Net of a training checkpoint as a small inference file.

    Args:
        checkpoint: a `train_unet` event checkpoint (needs "best_model", "unet"; "image_size" when size is None).
        file: destination path or writable binary file.
        size: slice size S the net expects (default: the checkpoint's "image_size").
        modality: what the net segments ("MR" or "CT"), for the CLI's PNG coding.
        sequence: e.g. "T2SPIR".

    Raises:
        CheckpointError: the checkpoint lacks a required entry.
    """
    for key in ("best_model", "unet", "config"):
        if key not in checkpoint:
            raise CheckpointError(f"U-Net checkpoint has no {key!r} entry (not written by train_unet?)")
    size = int(size if size is not None else checkpoint.get("image_size", 0))
    if size < 1:
        raise CheckpointError("U-Net checkpoint has no 'image_size'; pass size=")
    save_checkpoint(file, {
        "kind": EXPORT_KIND, "unet": dict(checkpoint["unet"]), "model": checkpoint["best_model"], "size": size,
        "modality": str(modality), "sequence": str(sequence), "config": dict(checkpoint["config"]),
        "best_step": int(checkpoint.get("best_step", -1)),
        "val_dice": float(checkpoint.get("best_val_dice", float("nan"))),
    })


def load_unet(checkpoint_path: str | os.PathLike | BinaryIO,
              device: torch.device | str | None = None) -> tuple[UNet, dict[str, Any]]:
    """Rebuild a U-Net from an exported file (`unet_export`) or a full `train_unet` checkpoint (its best weights).

    Args:
        checkpoint_path: path or readable binary file.
        device: where the model goes (default CPU).

    Returns:
        (model in eval mode, meta) with meta = {"size", "modality", "sequence", "config" (training config dict),
        "best_step", "val_dice"}.

    Raises:
        CheckpointError: unreadable file, or one that holds no U-Net (message names the file).
    """
    name = str(checkpoint_path) if isinstance(checkpoint_path, (str, os.PathLike)) else "<file object>"
    state = load_checkpoint(checkpoint_path)
    if state.get("kind") == EXPORT_KIND:
        weights, size = state["model"], state["size"]
        meta = {"modality": state.get("modality", "MR"), "sequence": state.get("sequence", "")}
    elif "best_model" in state and "unet" in state:
        weights, size = state["best_model"], state.get("image_size")
        meta = {"modality": "MR", "sequence": ""}
    else:
        raise CheckpointError(f"{name}: not a U-Net checkpoint (no 'kind': {EXPORT_KIND!r} or 'best_model' entry)")
    try:
        model = UNet(**state["unet"])
        model.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{name}: cannot rebuild the U-Net ({type(exc).__name__}: {exc})") from exc
    model.to(torch.device(device or "cpu")).eval()
    meta.update({"size": int(size) if size is not None else None, "config": dict(state.get("config", {})),
                 "best_step": int(state.get("best_step", -1)),
                 "val_dice": float(state.get("val_dice", state.get("best_val_dice", float("nan"))))})
    return model, meta


def write_chaos_masks(mask: np.ndarray, out_dir: str | os.PathLike, modality: str,
                      names: Sequence[str] | None = None) -> list[Path]:
    """Write one CHAOS-format PNG per slice (coding and names: see the module docstring).

    Args:
        mask: bool [Z, H, W] liver mask at native resolution.
        out_dir: directory (created); existing files of the same names are overwritten.
        modality: "CT" (1-bit, liver 1) or "MR" (8-bit, liver 63).
        names: optional file names, one per slice (e.g. to mirror the DICOM names); default liver_GT_NNN.png.

    Returns:
        The written paths, slice order.

    Raises:
        EssgridError: mask not [Z, H, W], an unknown modality, or names of the wrong length (names the argument).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise EssgridError(f"mask: expected [Z, H, W], got shape {mask.shape}")
    if modality not in ("CT", "MR"):
        raise EssgridError(f"modality: {modality!r}; expected 'CT' or 'MR'")
    z = mask.shape[0]
    if names is None:
        width = max(3, len(str(z - 1)))
        names = [f"liver_GT_{k:0{width}d}.png" for k in range(z)]
    elif len(names) != z:
        raise EssgridError(f"names: {len(names)} names for {z} slices")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        liver = mask[k] != 0
        if modality == "CT":
            img = Image.fromarray(liver)  # bool -> mode "1" (1-bit PNG)
        else:
            img = Image.fromarray(np.where(liver, MR_LIVER_VALUE, 0).astype(np.uint8), mode="L")
        path = out / name
        img.save(path)
        paths.append(path)
    log.info("wrote %d %s masks to %s", z, modality, out)
    return paths
