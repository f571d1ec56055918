"""Losses shared by EssNet and the U-Net: the LSGAN objective and soft Dice + cross-entropy.

`dice_ce_loss` is the segmentation loss of both EssNet's netS and the U-Net trials, so the two are trained toward the
same target. `NonFiniteLossError` is raised by training loops when a loss term turns NaN or inf, naming the term and
step, so a diverged run stops with a message instead of writing NaN weights to a checkpoint.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from datasets.errors import EssgridError

__all__ = ["GANLoss", "NonFiniteLossError", "dice_ce_loss", "soft_dice_loss", "check_finite"]


class NonFiniteLossError(EssgridError):
    """A loss term became NaN or inf (diverged training or a bad input batch); the message names term and step."""


def check_finite(losses: dict[str, float], step: int) -> None:
    """Raise if any loss value is NaN or inf.

    Args:
        losses: loss term name -> value.
        step: the training step the values belong to (named in the message).

    Raises:
        NonFiniteLossError: naming the first non-finite term, its value and the step.
    """
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss term {name!r} is {value} at step {step}")


class GANLoss(nn.Module):
    """LSGAN objective (Mao et al. 2017), as the CycleGAN code's `GANLoss('lsgan')`: MSE against 1 (real) or 0 (fake).

    Args:
        real_label: target for "real" (1.0).
        fake_label: target for "fake" (0.0).
    """

    def __init__(self, real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(float(real_label)), persistent=False)
        self.register_buffer("fake_label", torch.tensor(float(fake_label)), persistent=False)

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """MSE between a discriminator's patch map and the real/fake target.

        Args:
            prediction: discriminator output, any shape (e.g. [B, 1, h, w] patch scores).
            target_is_real: True to pull the prediction toward `real_label`.

        Returns:
            Scalar float32 loss.
        """
        target = self.real_label if target_is_real else self.fake_label
        prediction = prediction.float()  # loss in fp32 even under bf16 autocast
        return F.mse_loss(prediction, target.expand_as(prediction))


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False, smooth: float = 1e-5
) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the whole batch (sums over B, H, W).

    Pooling over the batch keeps the loss defined when some slices have no liver. Empty case: when a class is absent
    from the target AND predicted with zero probability, its Dice is smooth/smooth = 1 (loss 0); absent from the target
    but predicted, its Dice is ~0 (loss ~1), so false positives on empty slices are punished.

    Args:
        logits: [B, C, H, W] class logits (C >= 2).
        target: [B, H, W] int64 class indices in [0, C).
        include_background: also average class 0 (default False: foreground only).
        smooth: added to numerator and denominator.

    Returns:
        Scalar float32 loss in [0, 1].

    Raises:
        ValueError: on shape mismatch or fewer than 2 classes.
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits [B,C,H,W] and target [B,H,W] must match, got {tuple(logits.shape)} and {tuple(target.shape)}")
    n_classes = logits.shape[1]
    if n_classes < 2:
        raise ValueError(f"logits must have >= 2 classes, got {n_classes}")
    probs = torch.softmax(logits.float(), dim=1)  # [B, C, H, W]
    one_hot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).to(probs.dtype)  # [B, C, H, W]
    if not include_background:
        probs, one_hot = probs[:, 1:], one_hot[:, 1:]
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)  # [C']
    denominator = probs.sum(dims) + one_hot.sum(dims)  # [C']
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = False,
    smooth: float = 1e-5,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
) -> torch.Tensor:
    """Soft Dice over the foreground classes plus cross-entropy, equal weights by default.

    Args:
        logits: [B, C, H, W] class logits (any float dtype; computed in fp32).
        target: [B, H, W] int64 class indices (0 background, 1 liver).
        include_background: passed to `soft_dice_loss`.
        smooth: passed to `soft_dice_loss` (see there for the empty-mask case).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.

    Returns:
        Scalar float32 loss: lambda_dice * dice_loss + lambda_ce * cross_entropy.

    Raises:
        ValueError: on shape mismatch or fewer than 2 classes.
    """
    dice = soft_dice_loss(logits, target, include_background=include_background, smooth=smooth)
    ce = F.cross_entropy(logits.float(), target.long())
    return lambda_dice * dice + lambda_ce * ce
