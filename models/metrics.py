"""Segmentation metrics on numpy masks: Dice, IoU (per slice and per volume) and the CHAOS challenge's RAVD, ASSD, MSSD.

Pure numpy + scipy.ndimage (no torch, no ray), so the grid, `essgrid evaluate` and the tests share one definition.
Masks are bool arrays, volumes [Z, H, W]; spacing is the `Volume.spacing` tuple (row, col, slice) in mm.

The CHAOS definitions (Kavur et al., MedIA 2021, and the challenge's evaluation code), followed here so that scores
are comparable with the challenge's tables:
- RAVD = |V_pred - V_gt| / V_gt * 100, in PERCENT (the sample submission scores 0.665, i.e. 0.665 %).
- The surface of a mask = its voxels that touch the background through a face (mask minus its erosion by the 3D
  6-neighbour cross). Voxels beyond the array count as foreground, so a mask touching the array edge has no surface
  there (as the official code's `border_value=1`).
- Surface distances are from each surface voxel of one mask to the nearest surface voxel of the other (surface to
  surface, both directions pooled), in mm. ASSD = their mean, MSSD = their maximum.

Empty masks (an explicit argument, as MONAI's `ignore_empty`, never a hidden epsilon):
- both empty: Dice = IoU = `empty` (1.0 by default: nothing to find, nothing found; pass float("nan") to leave such
  cases out of a nanmean); RAVD = ASSD = MSSD = 0.0 (or NaN with `empty=nan`).
- target empty, prediction not: Dice = IoU = 0.0; RAVD = ASSD = MSSD = inf.
- prediction empty, target not: Dice = IoU = 0.0; RAVD = 100.0 (the whole volume missed); ASSD = MSSD = inf.
Infinity, not NaN, for a missing surface: a mean over test volumes then shows the failure instead of skipping it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "dice", "iou", "slice_dice", "slice_iou", "ravd", "surface_voxels", "surface_distances", "assd", "mssd",
    "compute_volume_metrics",
]

_CROSS_3D = ndimage.generate_binary_structure(3, 1)  # 6-neighbour structuring element (faces only)


def _pair(pred: np.ndarray, gt: np.ndarray, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape (non-zero = foreground)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"pred and gt must have {ndim} dimensions ([Z, H, W]), got shape {pred.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def _check_empty(empty: float) -> float:
    empty = float(empty)
    if not (math.isnan(empty) or 0.0 <= empty <= 1.0):
        raise ValueError(f"empty must be in [0, 1] or NaN, got {empty}")
    return empty


def _overlap_score(inter: np.ndarray, size_sum: np.ndarray, union: np.ndarray, kind: str, empty: float) -> np.ndarray:
    """Dice or IoU from counts; `empty` where both masks are empty (size_sum == 0)."""
    num, den = (2.0 * inter, size_sum) if kind == "dice" else (inter, union)
    out = np.full(np.shape(den), empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """Dice = 2|P∩G| / (|P| + |G|) over the whole array (any shape).

    Args:
        pred: predicted mask (non-zero = foreground).
        gt: target mask, same shape.
        empty: the score when BOTH masks are empty (1.0, or NaN to mark the case as undefined). Target empty and
            prediction not (or the reverse) scores 0.0.
    Returns:
        Dice in [0, 1] (or `empty`).
    Raises:
        ValueError: shapes differ, or `empty` outside [0, 1] and not NaN.
    """
    pred, gt = _pair(pred, gt)
    inter, p, g = np.count_nonzero(pred & gt), np.count_nonzero(pred), np.count_nonzero(gt)
    return float(_overlap_score(np.asarray(inter), np.asarray(p + g), np.asarray(p + g - inter), "dice",
                                _check_empty(empty)))


def iou(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """IoU (Jaccard) = |P∩G| / |P∪G| over the whole array; empty-mask convention as `dice`.

    Raises:
        ValueError: shapes differ, or `empty` outside [0, 1] and not NaN.
    """
    pred, gt = _pair(pred, gt)
    inter, p, g = np.count_nonzero(pred & gt), np.count_nonzero(pred), np.count_nonzero(gt)
    return float(_overlap_score(np.asarray(inter), np.asarray(p + g), np.asarray(p + g - inter), "iou",
                                _check_empty(empty)))


def _slice_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = _pair(pred, gt, ndim=3)
    inter = np.count_nonzero(pred & gt, axis=(1, 2))
    size_sum = np.count_nonzero(pred, axis=(1, 2)) + np.count_nonzero(gt, axis=(1, 2))
    return inter, size_sum, size_sum - inter


def slice_dice(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """Dice of each axial slice of two [Z, H, W] volumes (the 2D score a slice-wise paper reports).

    Args:
        pred, gt: masks [Z, H, W].
        empty: the score of a slice where both masks are empty (1.0, or NaN to leave it out of a nanmean).
    Returns:
        float64 [Z].
    Raises:
        ValueError: shapes differ or are not 3D; bad `empty`.
    """
    inter, size_sum, union = _slice_counts(pred, gt)
    return _overlap_score(inter, size_sum, union, "dice", _check_empty(empty))


def slice_iou(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """IoU of each axial slice of two [Z, H, W] volumes; empty-slice convention as `slice_dice`.

    Returns:
        float64 [Z].
    Raises:
        ValueError: shapes differ or are not 3D; bad `empty`.
    """
    inter, size_sum, union = _slice_counts(pred, gt)
    return _overlap_score(inter, size_sum, union, "iou", _check_empty(empty))


def ravd(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """Relative absolute volume difference |V_pred - V_gt| / V_gt, in PERCENT (as CHAOS reports it).

    Voxel counts suffice: the voxel volume cancels. Both empty: 0.0 (NaN if `empty` is NaN); target empty and
    prediction not: inf; prediction empty, target not: 100.0.

    Raises:
        ValueError: shapes differ; bad `empty`.
    """
    pred, gt = _pair(pred, gt)
    empty = _check_empty(empty)
    p, g = np.count_nonzero(pred), np.count_nonzero(gt)
    if g == 0:
        return (math.nan if math.isnan(empty) else 0.0) if p == 0 else math.inf
    return float(abs(p - g) / g * 100.0)


def _sampling(spacing: Sequence[float]) -> tuple[float, float, float]:
    """(row, col, slice) mm -> per-axis voxel size of a [Z, H, W] array: (slice, row, col)."""
    if len(spacing) != 3:
        raise ValueError(f"spacing must be (row, col, slice) in mm, got {tuple(spacing)!r}")
    row, col, slc = (float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in (row, col, slc)):
        raise ValueError(f"spacing must be three positive finite mm values (row, col, slice), got {tuple(spacing)!r}")
    return slc, row, col


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """The bounding box of the True voxels, grown by `margin` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The CHAOS surface of a 3D mask: foreground voxels with a background face neighbour.

    Computed on the mask's bounding box grown by one voxel (identical to the whole-array result, since erosion only
    looks one voxel out), so a small liver in a 512x512 volume costs little. Outside the array counts as foreground.

    Args:
        mask: bool [Z, H, W].
    Returns:
        bool [Z, H, W], True on surface voxels (all False for an empty mask).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [Z, H, W], got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    box = _bbox(mask, margin=1)
    sub = mask[box]
    out[box] = sub & ~ndimage.binary_erosion(sub, structure=_CROSS_3D, border_value=1)
    return out


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest surface voxel of the other.

    One Euclidean distance transform per direction (`sampling=` the voxel size, so anisotropic spacing is exact), on
    the bounding box of both surfaces: every surface voxel lies inside it, so the nearest one is found there.

    Args:
        pred, gt: bool [Z, H, W], both non-empty.
        spacing: (row, col, slice) in mm.
    Returns:
        (pred_to_gt, gt_to_pred): float64 arrays, one distance per surface voxel of pred and of gt.
    Raises:
        ValueError: shapes differ, bad spacing, or a mask is empty (no surface to measure to).
    """
    pred, gt = _pair(pred, gt, ndim=3)
    sampling = _sampling(spacing)
    s_pred, s_gt = surface_voxels(pred), surface_voxels(gt)
    if not s_pred.any() or not s_gt.any():
        raise ValueError("surface_distances needs two non-empty masks (see compute_volume_metrics for empty ones)")
    box = _bbox(s_pred | s_gt)
    s_pred, s_gt = s_pred[box], s_gt[box]
    to_gt = ndimage.distance_transform_edt(~s_gt, sampling=sampling)      # distance to the nearest gt surface voxel
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sampling)
    return to_gt[s_pred], to_pred[s_gt]


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm): the mean over both directions' surface distances, pooled.

    Empty masks: see `compute_volume_metrics` (this function needs two non-empty masks).
    """
    a, b = surface_distances(pred, gt, spacing)
    return float((a.sum() + b.sum()) / (a.size + b.size))


def mssd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Maximum symmetric surface distance (mm), i.e. the symmetric Hausdorff distance between the two surfaces."""
    a, b = surface_distances(pred, gt, spacing)
    return float(max(a.max(), b.max()))


def compute_volume_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                           empty: float = 1.0) -> dict[str, float]:
    """The CHAOS scores of one 3D prediction: dice, iou, ravd (%), assd (mm), mssd (mm).

    Args:
        pred: predicted mask, bool [Z, H, W].
        gt: target mask, bool [Z, H, W].
        spacing: (row, col, slice) voxel size in mm (`Volume.spacing`).
        empty: Dice/IoU when both masks are empty (1.0 or NaN; see the module docstring for every empty case:
            both empty -> ravd = assd = mssd = 0.0, NaN with empty=NaN; exactly one empty -> dice = iou = 0.0 and
            assd = mssd = inf; ravd = inf if only the target is empty, 100.0 if only the prediction is).
    Returns:
        {"dice", "iou", "ravd", "assd", "mssd"} as Python floats.
    Raises:
        ValueError: shapes differ or are not 3D, bad spacing, bad `empty`.
    """
    pred, gt = _pair(pred, gt, ndim=3)
    _sampling(spacing)
    empty = _check_empty(empty)
    out = {"dice": dice(pred, gt, empty), "iou": iou(pred, gt, empty), "ravd": ravd(pred, gt, empty)}
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if has_p and has_g and not (surface_voxels(pred).any() and surface_voxels(gt).any()):
        # a mask filling the whole volume has no surface (outside the array counts as foreground, as in the
        # official evaluation): no distance can be measured, so it scores like a missing surface
        out["assd"] = out["mssd"] = math.inf
    elif has_p and has_g:
        a, b = surface_distances(pred, gt, spacing)
        out["assd"] = float((a.sum() + b.sum()) / (a.size + b.size))
        out["mssd"] = float(max(a.max(), b.max()))
    elif has_p or has_g:
        out["assd"] = out["mssd"] = math.inf
    else:
        out["assd"] = out["mssd"] = math.nan if math.isnan(empty) else 0.0
    return out
