"""`essgrid evaluate PRED_DIR GROUND_DIR [--dicom DICOM_DIR]`: score PNG liver masks as the CHAOS evaluation does.

The official CHAOS evaluation pairs the k-th prediction PNG with the k-th ground-truth PNG (file-name order; here the
natural order, i2 < i10, which equals the official sorted order for CHAOS's zero-padded names), stacks them into
volumes, and reports Dice, RAVD (%), ASSD and MSSD (mm, from the DICOM series' pixel spacing and slice positions).
`models.metrics` holds the definitions; this module only reads folders.

Liver in a mask folder: CT ground truth is 1-bit (liver = 1 or 255), a CHAOS submission writes liver as 63, and MR
ground truth is organ-coded (liver 63, right kidney 126, left kidney 189, spleen 252). A folder whose grey values fall
in two or more CHAOS organ bands is read as organ-coded and its liver is the 55-70 band; any other folder is a
liver-only mask and every non-zero pixel is liver. (Decided per folder, not per file: a slice of an MR mask showing
only the spleen must not turn into liver, and CT's liver value 255 lies in the spleen band.)
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.chaos import MR_GREY_BANDS, natural_key, read_dicom_series
from datasets.errors import ChaosError
from models.metrics import compute_volume_metrics, slice_dice, slice_iou

log = logging.getLogger(__name__)

_LIVER_BAND = next((lo, hi) for label, lo, hi in MR_GREY_BANDS if label == 1)  # (55, 70)
_ISOTROPIC = (1.0, 1.0, 1.0)


def _mask_files(folder: Path, what: str) -> list[Path]:
    """The *.png files of a mask folder in natural name order; anything else visible in it is an error."""
    if not folder.exists():
        raise ChaosError(f"{folder}: {what} folder does not exist")
    if not folder.is_dir():
        raise ChaosError(f"{folder}: {what} is not a folder (expected a folder of one PNG mask per slice)")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]  # dotfiles (.DS_Store) are never data
    others = sorted((p for p in entries if not (p.is_file() and p.suffix.lower() == ".png")),
                    key=lambda p: natural_key(p.name))
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise ChaosError(f"{others[0]}: not a PNG mask{more}; the {what} folder must hold only one *.png per slice")
    if not entries:
        raise ChaosError(f"{folder}: {what} folder holds no PNG masks")
    return sorted(entries, key=lambda p: natural_key(p.name))


def _read_grey(path: Path) -> np.ndarray:
    """A mask PNG as 2D uint8 grey values (1-bit PNGs as 0/1)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "I", "I;16", "I;16B"):
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ChaosError(f"{path}: not a readable PNG ({err})") from err
    if arr.ndim != 2:
        raise ChaosError(f"{path}: expected a 2D grey mask, got an image of shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype != bool and (arr.min() < 0 or arr.max() > 255):
            raise ChaosError(f"{path}: grey value {int(arr.max())} outside 0..255; CHAOS masks are 8-bit")
        arr = arr.astype(np.uint8)
    return arr


def _read_mask_folder(folder: Path, what: str) -> tuple[np.ndarray, list[Path]]:
    """Grey values [Z, H, W] of one folder, slice k = k-th PNG in natural order."""
    paths = _mask_files(folder, what)
    first = _read_grey(paths[0])
    grey = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    grey[0] = first
    for k, path in enumerate(paths[1:], start=1):
        arr = _read_grey(path)
        if arr.shape != first.shape:
            raise ChaosError(f"{path}: mask is {arr.shape[0]}x{arr.shape[1]}, {paths[0].name} in the same folder is "
                             f"{first.shape[0]}x{first.shape[1]}")
        grey[k] = arr
    return grey, paths


def liver_from_grey(grey: np.ndarray) -> np.ndarray:
    """Liver mask of a folder's grey values: the 55-70 band if organ-coded (values in >= 2 CHAOS bands), else non-zero.

    Args:
        grey: uint8 [Z, H, W], one mask folder.
    Returns:
        bool [Z, H, W].
    """
    values = np.flatnonzero(np.bincount(grey.ravel(), minlength=256))
    bands = {label for label, lo, hi in MR_GREY_BANDS if ((values >= lo) & (values <= hi)).any()}
    if len(bands) >= 2:
        lo, hi = _LIVER_BAND
        return (grey >= lo) & (grey <= hi)
    return grey != 0


def _spacing(dicom_dir: str | Path | None, shape: tuple[int, int, int]) -> tuple[tuple[float, float, float], bool]:
    """(row, col, slice) mm from the DICOM folder, checked against the masks' shape; 1 mm isotropic without one."""
    if dicom_dir is None:
        log.warning("no DICOM folder given: surface distances (ASSD, MSSD) use 1 mm isotropic voxels, not mm of "
                    "the scan")
        return _ISOTROPIC, False
    image, spacing, paths = read_dicom_series(dicom_dir)
    if image.shape != shape:
        raise ChaosError(f"{dicom_dir}: the DICOM series is {image.shape[0]} slices of {image.shape[1]}x"
                         f"{image.shape[2]}, the masks are {shape[0]} of {shape[1]}x{shape[2]}")
    return spacing, True


def evaluate_folders(pred_dir: str | Path, ground_dir: str | Path,
                     dicom_dir: str | Path | None = None) -> dict[str, float]:
    """Score a folder of predicted PNG masks against a ground-truth folder, as one 3D volume (CHAOS style).

    Args:
        pred_dir: one PNG per slice (liver non-zero, or MR organ-coded).
        ground_dir: the CHAOS Ground folder (or any folder of PNG masks) of the same series.
        dicom_dir: the series' DICOM_anon folder, for the voxel spacing; without it distances are in voxels of 1 mm.
    Returns:
        dice, iou, ravd (%), assd (mm), mssd (mm) (empty-mask conventions of `models.metrics`), dice_slice_mean and
        iou_slice_mean (mean of the per-slice scores, slices empty in both counting 1.0), slices, spacing_row,
        spacing_col, spacing_slice (mm) and spacing_from_dicom (1.0 or 0.0).
    Raises:
        ChaosError: a folder missing or empty, a non-PNG file in it, an unreadable PNG, different PNG counts or sizes
            between the folders, a DICOM series of another size, or the DICOM errors of `read_dicom_series`.
    """
    pred_dir, ground_dir = Path(pred_dir), Path(ground_dir)
    pred_grey, pred_paths = _read_mask_folder(pred_dir, "prediction")
    gt_grey, gt_paths = _read_mask_folder(ground_dir, "ground-truth")
    if len(pred_paths) != len(gt_paths):
        raise ChaosError(f"{pred_dir}: {len(pred_paths)} PNG masks, but {ground_dir} holds {len(gt_paths)}; "
                         f"slice k pairs the k-th file of each folder, so the counts must match")
    if pred_grey.shape != gt_grey.shape:
        raise ChaosError(f"{pred_paths[0]}: mask is {pred_grey.shape[1]}x{pred_grey.shape[2]}, {gt_paths[0]} is "
                         f"{gt_grey.shape[1]}x{gt_grey.shape[2]}")
    spacing, from_dicom = _spacing(dicom_dir, gt_grey.shape)
    pred, gt = liver_from_grey(pred_grey), liver_from_grey(gt_grey)
    out = compute_volume_metrics(pred, gt, spacing)
    out["dice_slice_mean"] = float(np.mean(slice_dice(pred, gt)))
    out["iou_slice_mean"] = float(np.mean(slice_iou(pred, gt)))
    out["slices"] = float(gt.shape[0])
    out["spacing_row"], out["spacing_col"], out["spacing_slice"] = (float(s) for s in spacing)
    out["spacing_from_dicom"] = 1.0 if from_dicom else 0.0
    log.info("%s vs %s: %s", pred_dir, ground_dir, {k: round(v, 4) for k, v in out.items()})
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def format_report(metrics: dict[str, float]) -> str:
    """The result of `evaluate_folders` as a few terminal lines, CHAOS's line first.

    Args:
        metrics: the dict returned by `evaluate_folders`.
    Returns:
        Text without a trailing newline.
    """
    unit = "mm" if metrics.get("spacing_from_dicom", 1.0) else "voxels (1 mm assumed)"
    lines = [
        f"DICE={_fmt(metrics['dice'])} RAVD={_fmt(metrics['ravd'])} ASSD={_fmt(metrics['assd'])} "
        f"MSSD={_fmt(metrics['mssd'])}",
        f"  Dice {_fmt(metrics['dice'], 4)}  IoU {_fmt(metrics['iou'], 4)}  (3D, whole volume)",
    ]
    if "dice_slice_mean" in metrics:
        lines.append(f"  Dice {_fmt(metrics['dice_slice_mean'], 4)}  IoU {_fmt(metrics['iou_slice_mean'], 4)}  "
                     f"(mean over {int(metrics.get('slices', 0))} slices)")
    lines.append(f"  RAVD {_fmt(metrics['ravd'])} %  ASSD {_fmt(metrics['assd'])} {unit}  "
                 f"MSSD {_fmt(metrics['mssd'])} {unit}")
    if "spacing_row" in metrics:
        lines.append(f"  spacing (row, col, slice) = ({metrics['spacing_row']:g}, {metrics['spacing_col']:g}, "
                     f"{metrics['spacing_slice']:g}) mm")
    if not metrics.get("spacing_from_dicom", 1.0):
        lines.append("  note: no DICOM folder given (--dicom), so ASSD and MSSD assume 1 mm isotropic voxels; "
                     "pass the series' DICOM_anon folder for millimetres")
    return "\n".join(lines)
