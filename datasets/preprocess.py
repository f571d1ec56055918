"""Intensity normalisation and resizing of CHAOS volumes into the fixed-size slices every network sees.

Both modalities end in [-1, 1] (the range of the CycleGAN generators' tanh output), at one square size S:

- CT: a fixed abdominal liver window in Hounsfield units, `CT_WINDOW` = (-160, 240) HU (level 40, width 400),
  clipped, then mapped linearly to [-1, 1]. HU are absolute, so one window serves every patient.
- MR: intensities are arbitrary per scanner and patient, so each volume is normalised on its own: the body is the
  set of voxels brighter than `MR_BODY_FRACTION` of the way from the minimum to the 99.9th percentile (this drops the
  air around the patient, which would otherwise pull the low percentile to zero), and the 0.5th / 99.5th
  percentiles of the body are mapped to -1 / +1 (clipped), so a few bright vessels or fat pixels do not compress
  the liver's contrast.

Resizing (scikit-image `resize`, `preserve_range=True`): images with linear interpolation and Gaussian
anti-aliasing when shrinking; masks with order 0 (nearest), so they stay exactly {0, 1}. A non-square native slice
(H != W) is stretched anisotropically to S x S and `resize_to_native` stretches it back: no cropping or padding, so
every native pixel maps to one place and back. The native shape, spacing and the native liver mask travel with the
slices, so predictions are scored at native resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

CT_WINDOW: tuple[float, float] = (-160.0, 240.0)     # HU; abdomen / liver (level 40, width 400)
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)    # of the body voxels
MR_BODY_FRACTION = 0.10                              # body threshold, fraction of [min, p99.9]
PROBABILITY_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class PreprocessedVolume:
    """One volume ready for the slice store; slice k is slice k of the source `Volume`.

    eq=False: equality by identity (arrays have no single truth value).
    """

    patient_id: str
    modality: str                      # "CT" or "MR"
    sequence: str                      # "CT", "T2SPIR", ...
    image: np.ndarray                  # float32 [Z, S, S] in [-1, 1]
    mask: np.ndarray | None            # uint8 [Z, S, S] liver 0/1; None when the volume has no masks
    mask_native: np.ndarray | None     # bool [Z, H, W] liver at native resolution; None without masks
    spacing: tuple[float, float, float]  # native (row, col, slice) in mm
    native_shape: tuple[int, int]      # native (H, W)

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])


def window_ct(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Clip Hounsfield units to `window` = (low, high) and map it linearly to [-1, 1].

    Args:
        hu: CT intensities in HU, any shape.
        window: (low, high) in HU, low < high.
    Returns:
        float32 array of the same shape in [-1, 1].
    Raises:
        ValueError: low >= high.
    """
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"window: low {lo} must be below high {hi}")
    out = (np.asarray(hu, dtype=np.float32) - lo) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def normalize_mr(image: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES,
                 body_fraction: float = MR_BODY_FRACTION) -> np.ndarray:
    """Robust per-volume MR normalisation to [-1, 1] (see the module docstring for why the body only).

    Args:
        image: one MR volume (any shape), raw scanner intensities.
        percentiles: (low, high) percentiles of the body voxels that map to -1 and +1.
        body_fraction: body = voxels above min + body_fraction * (p99.9 - min). When fewer than 1 % of the voxels
            pass, all voxels count as body.
    Returns:
        float32 array of the same shape in [-1, 1]; a constant volume maps to all -1.
    Raises:
        ValueError: percentiles not 0 <= low < high <= 100, or body_fraction outside [0, 1).
    """
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles: {percentiles!r}; expected 0 <= low < high <= 100")
    if not 0.0 <= body_fraction < 1.0:
        raise ValueError(f"body_fraction: {body_fraction!r}; expected a value in [0, 1)")
    image = np.asarray(image, dtype=np.float32)
    vmin = float(image.min())
    threshold = vmin + body_fraction * (float(np.percentile(image, 99.9)) - vmin)
    body = image[image > threshold]
    if body.size < 0.01 * image.size:
        body = image.ravel()
    lo, hi = (float(v) for v in np.percentile(body, [p_lo, p_hi]))
    if hi <= lo:
        return np.full(image.shape, -1.0, dtype=np.float32)
    out = (image - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize each slice of float [Z, H, W] to [Z, size, size]: linear, anti-aliased when shrinking.

    One 3D call with Z unchanged: scikit-image samples slice centres exactly and its anti-aliasing sigma along Z
    is 0, so slices never mix.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape[1:] == (size, size):
        return image.copy()
    shrink = image.shape[1] > size or image.shape[2] > size
    out = resize(image, (image.shape[0], size, size), order=1, mode="edge", anti_aliasing=shrink,
                 preserve_range=True)
    return out.astype(np.float32, copy=False)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize each slice of a bool/0-1 mask [Z, H, W] to uint8 [Z, size, size] by nearest neighbour (order 0)."""
    mask = np.asarray(mask).astype(np.uint8, copy=False)
    if mask.shape[1:] == (size, size):
        return mask.copy()
    out = resize(mask, (mask.shape[0], size, size), order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return (out > 0).astype(np.uint8)


def normalise_image(image: np.ndarray, modality: str, size: int, *,
                    ct_window: tuple[float, float] = CT_WINDOW,
                    mr_percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """The image half of `preprocess_volume`, for a bare series (e.g. predicting on new DICOMs): same numbers.

    Args:
        image: float [Z, H, W]; CT in HU, MR raw.
        modality: "CT" or "MR".
        size: the square output size S (>= 8).
        ct_window, mr_percentiles: as `window_ct` / `normalize_mr`.
    Returns:
        float32 [Z, S, S] in [-1, 1].
    Raises:
        ValueError: size < 8, an image that is not [Z, H, W], or a modality other than "CT"/"MR".
    """
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"size: {size!r}; expected an integer >= 8")
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image must be [Z, H, W], got shape {image.shape}")
    if modality == "CT":
        normalised = window_ct(image, ct_window)
    elif modality == "MR":
        normalised = normalize_mr(image, mr_percentiles)
    else:
        raise ValueError(f"modality {modality!r}; expected 'CT' or 'MR'")
    return np.clip(resize_image(normalised, int(size)), -1.0, 1.0)


def preprocess_volume(vol, size: int, *, ct_window: tuple[float, float] = CT_WINDOW,
                      mr_percentiles: tuple[float, float] = MR_PERCENTILES) -> PreprocessedVolume:
    """Normalise and resize one `datasets.chaos.Volume` (pure: the input is not modified).

    Args:
        vol: a `Volume` (CT in HU, MR raw), image float [Z, H, W], liver bool [Z, H, W] or None.
        size: the square output size S (>= 8).
        ct_window: (low, high) HU for CT.
        mr_percentiles: (low, high) body percentiles for MR.
    Returns:
        A `PreprocessedVolume`: image float32 [Z, S, S] in [-1, 1], mask uint8 [Z, S, S] (or None), the native
        liver mask, spacing and native (H, W).
    Raises:
        ValueError: size < 8, an image that is not [Z, H, W], or a modality other than "CT"/"MR".
    """
    image = np.asarray(vol.image)
    try:
        normalised = normalise_image(image, vol.modality, size, ct_window=ct_window, mr_percentiles=mr_percentiles)
    except ValueError as e:
        raise ValueError(f"patient {vol.patient_id!r}: {e}") from None
    liver = None if vol.liver is None else np.asarray(vol.liver, dtype=bool)
    return PreprocessedVolume(
        patient_id=str(vol.patient_id), modality=vol.modality, sequence=vol.sequence,
        image=normalised,
        mask=None if liver is None else resize_mask(liver, int(size)),
        mask_native=None if liver is None else liver.copy(),
        spacing=tuple(float(s) for s in vol.spacing),
        native_shape=(int(image.shape[1]), int(image.shape[2])),
    )


def resize_to_native(pred: np.ndarray, native_shape: tuple[int, int],
                     threshold: float = PROBABILITY_THRESHOLD) -> np.ndarray:
    """Bring a prediction at the preprocessed size back to the native (H, W), to score it there.

    Two rules, by dtype:
    - bool / integer (a hard mask): nearest neighbour (order 0); the exact inverse of how masks were shrunk.
    - float (a probability map in [0, 1]): linear resize of the probabilities, then `>= threshold`. This gives
      smoother native edges than upsampling an already thresholded mask, at no extra cost.

    Args:
        pred: [Z, S, S] (or one slice [S, S]) bool/int mask or float probabilities.
        native_shape: (H, W) of the native slices.
        threshold: probability cut for float input.
    Returns:
        bool [Z, H, W] ([H, W] for 2D input).
    Raises:
        ValueError: pred is not 2D/3D or native_shape is not two positive ints.
    """
    pred = np.asarray(pred)
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred: expected [Z, S, S] or [S, S], got shape {pred.shape}")
    if len(native_shape) != 2 or min(int(v) for v in native_shape) < 1:
        raise ValueError(f"native_shape: {native_shape!r}; expected (H, W) with H, W >= 1")
    squeeze = pred.ndim == 2
    pred3 = pred[None] if squeeze else pred
    target = (pred3.shape[0], int(native_shape[0]), int(native_shape[1]))
    if np.issubdtype(pred3.dtype, np.floating):
        if pred3.shape == target:
            out = pred3 >= threshold
        else:
            prob = resize(pred3.astype(np.float32), target, order=1, mode="edge", anti_aliasing=False,
                          preserve_range=True)
            out = prob >= threshold
    else:
        hard = pred3 != 0
        if hard.shape == target:
            out = hard.copy()
        else:
            out = resize(hard.astype(np.uint8), target, order=0, mode="edge", anti_aliasing=False,
                         preserve_range=True) > 0
    return out[0] if squeeze else out
