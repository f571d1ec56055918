"""CHAOS reader: DICOM series and their Ground masks, as the challenge distributes them, into `Volume`s.

Layout (Kavur et al., MedIA 2021; the Train_Sets / Test_Sets downloads):

    CT/<id>/DICOM_anon/*.dcm                      CT/<id>/Ground/liver_GT_NNN.png   (1-bit, liver = 1 or 255)
    MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm   MR/<id>/T1DUAL/Ground/*.png (one mask set, both phases)
    MR/<id>/T2SPIR/DICOM_anon/*.dcm                      MR/<id>/T2SPIR/Ground/*.png
    MR masks are grey-coded: liver 63, right kidney 126, left kidney 189, spleen 252 (each within a tolerance band).

Slice k is the k-th file in natural name order (i2 < i10), for images and masks alike. That is how the official
CHAOS evaluation pairs them, and it is NOT the order of the DICOM position tags (in the real sample the table
position decreases with the file index, so sorting by position turns the masks upside down).

A patient without a Ground folder (the CHAOS test sets) is read as images only. Everything a data file can get wrong
raises `ChaosError` naming the file or folder. numpy + pydicom + Pillow only: no torch, no ray.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from datasets.errors import ChaosError, ConfigError

log = logging.getLogger(__name__)

MODALITIES = ("CT", "MR")
MR_SEQUENCES = ("T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase")

# (label, lowest grey, highest grey): the CHAOS MR ground-truth code. 0 is background; anything else is an error.
MR_GREY_BANDS: tuple[tuple[int, int, int], ...] = (
    (1, 55, 70),    # liver, nominal 63
    (2, 110, 135),  # right kidney, nominal 126
    (3, 175, 200),  # left kidney, nominal 189
    (4, 240, 255),  # spleen, nominal 252
)
_UNKNOWN = 255
_MR_LUT = np.full(256, _UNKNOWN, dtype=np.uint8)
_MR_LUT[0] = 0
for _label, _lo, _hi in MR_GREY_BANDS:
    _MR_LUT[_lo:_hi + 1] = _label

# sequence -> (image folder, Ground folder), relative to the MR patient folder
_MR_LAYOUT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "T2SPIR": (("T2SPIR", "DICOM_anon"), ("T2SPIR", "Ground")),
    "T1DUAL_InPhase": (("T1DUAL", "DICOM_anon", "InPhase"), ("T1DUAL", "Ground")),
    "T1DUAL_OutPhase": (("T1DUAL", "DICOM_anon", "OutPhase"), ("T1DUAL", "Ground")),
}

_EXPECTED = (
    "expected a CHAOS root holding CT/ and/or MR/ (e.g. Train_Sets), a CT/ or MR/ folder of patient folders, "
    "a CT patient folder holding DICOM_anon/, or an MR patient folder holding T1DUAL/ and/or T2SPIR/"
)


@dataclass(frozen=True, eq=False)
class Volume:
    """One patient's series with its masks, slice k = k-th file in natural name order.

    eq=False: equality and hashing are by identity (field-wise == on arrays has no single truth value).
    """

    patient_id: str
    modality: str             # "CT" or "MR"
    sequence: str             # "CT", "T1DUAL_InPhase", "T1DUAL_OutPhase" or "T2SPIR"
    image: np.ndarray         # float32 [Z, H, W]; CT in HU (RescaleSlope/Intercept applied)
    liver: np.ndarray | None  # bool [Z, H, W]; None when the patient has no Ground folder
    labels: np.ndarray | None # uint8 [Z, H, W]: 0 background, 1 liver, 2 right kidney, 3 left kidney, 4 spleen
    spacing: tuple[float, float, float]  # (row, col, slice) in mm
    image_paths: tuple[str, ...]
    mask_paths: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"Volume {self.patient_id!r}: modality {self.modality!r} is not one of {MODALITIES}")
        if self.image.ndim != 3:
            raise ValueError(f"Volume {self.patient_id!r}: image must be [Z, H, W], got shape {self.image.shape}")
        if len(self.image_paths) != self.image.shape[0]:
            raise ValueError(f"Volume {self.patient_id!r}: {len(self.image_paths)} image paths for "
                             f"{self.image.shape[0]} slices")
        for name in ("liver", "labels"):
            mask = getattr(self, name)
            if mask is not None and mask.shape != self.image.shape:
                raise ValueError(f"Volume {self.patient_id!r}: {name} shape {mask.shape} != image shape "
                                 f"{self.image.shape}")
        if (self.liver is None) != (self.labels is None):
            raise ValueError(f"Volume {self.patient_id!r}: liver and labels must both be set or both be None")

    @property
    def has_masks(self) -> bool:
        return self.liver is not None


@dataclass(frozen=True)
class PatientRef:
    """A patient folder found in a CHAOS tree (nothing read yet)."""

    modality: str
    patient_id: str
    path: Path


@dataclass(frozen=True)
class SeriesRef:
    """One series of one patient, listed without decoding anything: enough for progress bars and planning."""

    modality: str
    patient_id: str
    sequence: str
    image_dir: Path
    ground_dir: Path | None   # None: no Ground folder (a test-set patient)
    n_slices: int


# ---------------------------------------------------------------------------------------------------------------
# names and listings

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: "i2" < "i10", "i0000,0000b" < "i0001,0000b".

    Text parts compare case-insensitively; the name itself breaks remaining ties so the order is total.

    Args:
        name: a file or folder name (a path's last component is used if a path is given).
    Returns:
        A tuple whose parts alternate text / int, so any two keys compare without type errors.
    """
    name = Path(name).name
    parts = _DIGITS.split(name)
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return key + (name,)


def _visible(path: Path) -> bool:
    """Hidden files (.DS_Store, AppleDouble ._x.dcm) and archive litter (__MACOSX) are never data."""
    return not (path.name.startswith(".") or path.name.startswith("__"))


def _list_files(folder: Path, suffix: str) -> list[Path]:
    """Visible files in `folder` ending in `suffix` (case-insensitive), in natural name order."""
    files = [p for p in folder.iterdir() if _visible(p) and p.is_file() and p.name.lower().endswith(suffix)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p) and p.is_dir()), key=lambda p: natural_key(p.name))


def _folder_id(path: Path) -> str:
    """A patient's id is its folder name ("." resolved first, so reading from inside a patient folder works)."""
    return path.name or path.resolve().name


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise ChaosError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise ChaosError(f"{path}: {what} is not a folder")


def _patient_modality(folder: Path) -> str | None:
    """"CT" / "MR" when `folder` is laid out as a CHAOS patient folder, else None."""
    is_ct = (folder / "DICOM_anon").is_dir()
    is_mr = (folder / "T1DUAL").is_dir() or (folder / "T2SPIR").is_dir()
    if is_ct and is_mr:
        raise ChaosError(f"{folder}: holds both DICOM_anon/ (CT) and T1DUAL/ or T2SPIR/ (MR); a CHAOS patient "
                         f"folder is one or the other")
    return "CT" if is_ct else "MR" if is_mr else None


def _patients_in(folder: Path, modality: str | None) -> list[PatientRef]:
    """Patient folders directly inside `folder` (a CT/ or MR/ folder); `modality` None: take each one's own."""
    refs = []
    for child in _subdirs(folder):
        found = _patient_modality(child)
        if found is None:
            want = {"CT": "DICOM_anon/", "MR": "T1DUAL/ or T2SPIR/"}.get(modality or "", "DICOM_anon/ (CT) or "
                                                                        "T1DUAL/ and/or T2SPIR/ (MR)")
            raise ChaosError(f"{child}: not a CHAOS patient folder (expected it to hold {want})")
        if modality is not None and found != modality:
            raise ChaosError(f"{child}: an {found} patient folder inside the {modality} folder {folder}")
        refs.append(PatientRef(found, child.name, child))
    return refs


def find_patients(root: str | Path) -> list[PatientRef]:
    """The patients of a CHAOS tree, CT first, ids in natural order.

    `root` may be a CHAOS root holding CT/ and/or MR/ (or the unzipped folder whose single subfolder is one),
    a CT/ or MR/ folder, or a single patient folder (its id is the folder name).

    Args:
        root: the folder to read.
    Returns:
        One `PatientRef` per patient folder.
    Raises:
        ChaosError: `root` does not exist, is not laid out as CHAOS (the message says what was expected), holds a
            folder that is not a patient, or holds no patient at all.
    """
    root = Path(root)
    _require_dir(root, "CHAOS folder")
    modality = _patient_modality(root)
    if modality is not None:
        return [PatientRef(modality, _folder_id(root), root)]
    tops = [m for m in MODALITIES if (root / m).is_dir()]
    if tops:
        refs = [ref for m in tops for ref in _patients_in(root / m, m)]
        if not refs:
            raise ChaosError(f"{root}: {' and '.join(m + '/' for m in tops)} hold no patient folders")
        return refs
    children = _subdirs(root)
    if any(_patient_modality(c) is not None for c in children):
        hint = root.name.upper() if root.name.upper() in MODALITIES else None
        refs = _patients_in(root, hint)
        return sorted(refs, key=lambda r: (MODALITIES.index(r.modality), natural_key(r.patient_id)))
    if len(children) == 1 and any((children[0] / m).is_dir() for m in MODALITIES):
        return find_patients(children[0])  # e.g. CHAOS_Train_Sets/ holding Train_Sets/
    raise ChaosError(f"{root}: not a CHAOS folder; {_EXPECTED}")


def _check_modalities(modalities: Iterable[str] | str) -> tuple[str, ...]:
    modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise ConfigError(f"modalities: {bad or modalities!r} not in {MODALITIES}")
    return modalities


def _check_sequences(sequences: Iterable[str] | str) -> tuple[str, ...]:
    sequences = (sequences,) if isinstance(sequences, str) else tuple(sequences)
    bad = [s for s in sequences if s not in MR_SEQUENCES]
    if bad:
        raise ConfigError(f"sequences: {bad!r} unknown; MR sequences are {MR_SEQUENCES} (CT has one series, "
                          f"always read)")
    if not sequences:
        raise ConfigError(f"sequences: empty; choose from {MR_SEQUENCES}")
    return sequences


def patient_series(patient: PatientRef, sequences: Sequence[str] = ("T2SPIR",)) -> list[SeriesRef]:
    """The series of one patient that `sequences` selects (CT: its one series), with slice counts.

    Args:
        patient: from `find_patients`.
        sequences: MR sequences to list, in this order; ignored for CT.
    Returns:
        One `SeriesRef` per series.
    Raises:
        ChaosError: a selected sequence's image folder is missing.
        ConfigError: an unknown sequence name.
    """
    if patient.modality == "CT":
        layout = {"CT": (("DICOM_anon",), ("Ground",))}
    else:
        layout = {s: _MR_LAYOUT[s] for s in _check_sequences(sequences)}
    refs = []
    for sequence, (image_parts, ground_parts) in layout.items():
        image_dir = patient.path.joinpath(*image_parts)
        _require_dir(image_dir, f"{sequence} image folder of {patient.modality} patient {patient.patient_id!r}")
        ground_dir = patient.path.joinpath(*ground_parts)
        refs.append(SeriesRef(patient.modality, patient.patient_id, sequence, image_dir,
                              ground_dir if ground_dir.is_dir() else None, len(_list_files(image_dir, ".dcm"))))
    return refs


def _select(root: str | Path, modalities: Iterable[str] | str) -> list[PatientRef]:
    modalities = _check_modalities(modalities)
    patients = find_patients(root)
    chosen = [p for p in patients if p.modality in modalities]
    if not chosen:
        found = sorted({p.modality for p in patients})
        raise ChaosError(f"{root}: no {' or '.join(modalities)} patients here, only {'/'.join(found)} "
                         f"(a {'/'.join(found)} folder where {' or '.join(modalities)} is expected)")
    return chosen


def list_series(root: str | Path, modalities: Iterable[str] | str = MODALITIES,
                sequences: Iterable[str] | str = ("T2SPIR",)) -> list[SeriesRef]:
    """Every series `iter_volumes` would read, in the same order, without decoding a pixel.

    Args:
        root: as for `find_patients`.
        modalities: "CT" and/or "MR".
        sequences: MR sequences (see `MR_SEQUENCES`).
    Returns:
        One `SeriesRef` per volume `iter_volumes` yields; sum `n_slices` for a progress bar.
    Raises:
        ChaosError: as `find_patients`, or none of `modalities` is present.
        ConfigError: an unknown modality or sequence.
    """
    sequences = _check_sequences(sequences)  # checked even for CT only: a typo is never silently ignored
    return [s for p in _select(root, modalities) for s in patient_series(p, sequences)]


def count_slices(root: str | Path, modalities: Iterable[str] | str = MODALITIES,
                 sequences: Iterable[str] | str = ("T2SPIR",)) -> int:
    """Total slices `iter_volumes` will yield (file listing only; cheap)."""
    return sum(s.n_slices for s in list_series(root, modalities, sequences))


# ---------------------------------------------------------------------------------------------------------------
# DICOM

def _read_dicom(path: Path) -> pydicom.Dataset:
    """One DICOM dataset; a file without the DICM preamble is accepted only if it parses and holds pixel data."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad file, named
        raise ChaosError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    try:
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" in ds and "Rows" in ds:
            return ds
    except Exception:  # noqa: BLE001 - a forced parse of a non-DICOM file fails in many ways
        pass
    raise ChaosError(f"{path}: not a DICOM file (no DICM header; CHAOS images are DICOM files named *.dcm)")


def _slice_spacing(datasets_first: pydicom.Dataset, positions: list[np.ndarray | None], folder: Path) -> float:
    """Median distance between consecutive slice positions along the slice normal; tags as fallback."""
    iop = datasets_first.get("ImageOrientationPatient")
    if len(positions) > 1 and iop is not None and len(iop) == 6 and all(p is not None for p in positions):
        row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        normal = np.cross(row_dir, col_dir)
        along = np.asarray(positions) @ normal
        step = float(np.median(np.abs(np.diff(along))))
        if step > 0:
            return step
        log.warning("%s: slices share one position; slice spacing taken from the tags", folder)
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = datasets_first.get(tag)
        if value not in (None, "") and float(value) > 0:
            if len(positions) > 1:
                log.warning("%s: no usable ImagePositionPatient/ImageOrientationPatient; slice spacing from %s",
                            folder, tag)
            return float(value)
    raise ChaosError(f"{folder}: cannot tell the slice spacing (no ImagePositionPatient/ImageOrientationPatient "
                     f"across slices, no SpacingBetweenSlices or SliceThickness)")


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float], tuple[str, ...]]:
    """Read one CHAOS DICOM_anon folder as a volume, slice k = k-th *.dcm in natural name order.

    Pixel data are decoded once per file into a preallocated array; RescaleSlope/Intercept are applied (HU for CT).

    Args:
        folder: a folder of single-slice DICOM files (dotfiles and names not ending in .dcm are ignored).
    Returns:
        image float32 [Z, H, W], spacing (row, col, slice) in mm, and the file paths in slice order.
    Raises:
        ChaosError: the folder is missing or holds no .dcm file; a .dcm file that is not DICOM, is truncated, has no
            pixel data or several frames; files of different series (SeriesInstanceUID) or sizes (Rows/Columns);
            no PixelSpacing or slice spacing. Each message names the file.
    """
    folder = Path(folder)
    _require_dir(folder, "DICOM folder")
    paths = _list_files(folder, ".dcm")
    if not paths:
        subs = [p.name + "/" for p in _subdirs(folder)]
        holds = f"; it holds the folders {', '.join(subs)} (read one of them)" if subs else ""
        raise ChaosError(f"{folder}: no .dcm files{holds}")
    image: np.ndarray | None = None
    positions: list[np.ndarray | None] = []
    first: pydicom.Dataset | None = None
    for k, path in enumerate(paths):
        ds = _read_dicom(path)
        if "PixelData" not in ds:
            raise ChaosError(f"{path}: DICOM file without pixel data")
        try:
            pixels = ds.pixel_array  # decodes now: a truncated file fails here, not later
        except Exception as err:  # noqa: BLE001 - every decoder failure is a bad file, named
            raise ChaosError(f"{path}: pixel data cannot be decoded ({err})") from err
        if pixels.ndim != 2:
            raise ChaosError(f"{path}: expected one 2D slice per file, got pixel data of shape {pixels.shape}")
        if first is None:
            first = ds
            image = np.empty((len(paths),) + pixels.shape, dtype=np.float32)
        else:
            uid0, uid = first.get("SeriesInstanceUID"), ds.get("SeriesInstanceUID")
            if uid0 != uid:
                raise ChaosError(f"{path}: SeriesInstanceUID {uid} differs from {uid0} of {paths[0].name}; "
                                 f"two series mixed in {folder}")
            if pixels.shape != image.shape[1:]:
                raise ChaosError(f"{path}: {pixels.shape[0]}x{pixels.shape[1]} (Rows x Columns) differs from "
                                 f"{image.shape[1]}x{image.shape[2]} of {paths[0].name}; two series mixed in "
                                 f"{folder}")
        out = image[k]
        out[...] = pixels
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1.0:
            out *= slope
        if intercept != 0.0:
            out += intercept
        ipp = ds.get("ImagePositionPatient")
        positions.append(np.asarray(ipp, float) if ipp is not None and len(ipp) == 3 else None)
    assert first is not None and image is not None
    pixel_spacing = first.get("PixelSpacing")
    if pixel_spacing is None or len(pixel_spacing) != 2:
        raise ChaosError(f"{paths[0]}: no PixelSpacing (row, column) tag")
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]), _slice_spacing(first, positions, folder))
    return image, spacing, tuple(str(p) for p in paths)


# ---------------------------------------------------------------------------------------------------------------
# masks

def _read_png(path: Path) -> np.ndarray:
    """A mask PNG as a 2D uint8 (1-bit PNGs as 0/1)."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ChaosError(f"{path}: not a readable PNG ({err})") from err
    if arr.ndim == 3:  # grey stored as RGB(A): accept only when the colour channels agree
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ChaosError(f"{path}: a colour PNG; CHAOS masks are grey-level")
        arr = arr[..., 0]
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ChaosError(f"{path}: grey value {int(arr.max())} outside 0..255; CHAOS masks are 8-bit")
        arr = arr.astype(np.uint8)
    return arr


def read_masks(folder: str | Path, modality: str, shape: tuple[int, int, int]
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a CHAOS Ground folder, mask k = k-th *.png in natural name order.

    CT masks are liver-only (any non-zero pixel is liver; CHAOS writes 1 or 255). MR masks are grey-coded per
    `MR_GREY_BANDS`; 0 is background and any other grey value is an error, since it means the file is not a
    CHAOS mask (or a resampled one) and guessing its organ would corrupt the labels silently.

    Args:
        folder: the Ground folder.
        modality: "CT" or "MR".
        shape: (Z, H, W) of the image volume the masks belong to.
    Returns:
        liver bool [Z, H, W], labels uint8 [Z, H, W] (0 background, 1 liver, 2 right kidney, 3 left kidney,
        4 spleen; CT only 0/1), and the mask paths in slice order.
    Raises:
        ChaosError: missing folder, a PNG count other than Z, a mask whose size is not (H, W), an unreadable PNG, or
            an MR grey value outside every band. Each message names the folder or file.
        ConfigError: an unknown modality.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality: {modality!r} not in {MODALITIES}")
    folder = Path(folder)
    _require_dir(folder, "Ground folder")
    z, h, w = shape
    paths = _list_files(folder, ".png")
    if len(paths) != z:
        raise ChaosError(f"{folder}: {len(paths)} mask PNGs for {z} image slices; a Ground folder needs one mask "
                         f"per slice")
    labels = np.empty((z, h, w), dtype=np.uint8)
    for k, path in enumerate(paths):
        grey = _read_png(path)
        if grey.shape != (h, w):
            raise ChaosError(f"{path}: mask is {grey.shape[0]}x{grey.shape[1]}, its image slice is {h}x{w}")
        if modality == "CT":
            np.not_equal(grey, 0, out=labels[k], casting="unsafe")
        else:
            coded = _MR_LUT[grey]
            if (coded == _UNKNOWN).any():
                value = int(grey[coded == _UNKNOWN][0])
                raise ChaosError(f"{path}: grey value {value} is in no CHAOS band (0 background, liver 55-70, "
                                 f"right kidney 110-135, left kidney 175-200, spleen 240-255)")
            labels[k] = coded
    return labels == 1, labels, tuple(str(p) for p in paths)


# ---------------------------------------------------------------------------------------------------------------
# volumes

def read_series(series: SeriesRef) -> Volume:
    """Read one listed series and its masks (none when it has no Ground folder).

    Raises:
        ChaosError: as `read_dicom_series` and `read_masks`.
    """
    image, spacing, image_paths = read_dicom_series(series.image_dir)
    if series.ground_dir is None:
        log.info("%s %s %s: no Ground folder; images only", series.modality, series.patient_id, series.sequence)
        liver, labels, mask_paths = None, None, ()
    else:
        liver, labels, mask_paths = read_masks(series.ground_dir, series.modality, image.shape)
    return Volume(series.patient_id, series.modality, series.sequence, image, liver, labels, spacing,
                  image_paths, mask_paths)


def _read_patient(patient: PatientRef, sequences: Sequence[str]) -> list[Volume]:
    volumes: list[Volume] = []
    for series in patient_series(patient, sequences):
        shared = next((v for v in volumes if series.ground_dir is not None and v.mask_paths
                       and Path(v.mask_paths[0]).parent == series.ground_dir), None)
        if shared is None:
            volumes.append(read_series(series))
            continue
        # T1DUAL phases share one Ground folder: decode it once, check it against this phase, copy the arrays
        image, spacing, image_paths = read_dicom_series(series.image_dir)
        if image.shape != shared.image.shape:
            raise ChaosError(f"{series.image_dir}: {image.shape} slices x rows x columns, but the other phase "
                             f"sharing {series.ground_dir} is {shared.image.shape}")
        volumes.append(Volume(series.patient_id, series.modality, series.sequence, image, shared.liver.copy(),
                              shared.labels.copy(), spacing, image_paths, shared.mask_paths))
    return volumes


def read_patient(path: str | Path, modality: str | None = None,
                 sequences: Iterable[str] | str = ("T2SPIR",)) -> list[Volume]:
    """Read one patient folder: CT gives one volume, MR one per selected sequence (in the order given).

    Args:
        path: a CT patient folder (holding DICOM_anon/) or an MR one (holding T1DUAL/ and/or T2SPIR/).
        modality: "CT" or "MR" to insist on one; None accepts what the folder is.
        sequences: MR sequences (see `MR_SEQUENCES`); ignored for CT.
    Returns:
        The patient's volumes; the id is the folder name.
    Raises:
        ChaosError: not a patient folder, the other modality than `modality`, or as `read_series`.
        ConfigError: an unknown modality or sequence.
    """
    path = Path(path)
    _require_dir(path, "patient folder")
    found = _patient_modality(path)
    if found is None:
        raise ChaosError(f"{path}: not a CHAOS patient folder; expected DICOM_anon/ (CT) or T1DUAL/ and/or "
                         f"T2SPIR/ (MR) in it")
    if modality is not None:
        _check_modalities((modality,))
        if found != modality:
            raise ChaosError(f"{path}: a {found} patient folder where {modality} is expected")
    return _read_patient(PatientRef(found, _folder_id(path), path), _check_sequences(sequences))


def iter_volumes(root: str | Path, modalities: Iterable[str] | str = MODALITIES,
                 sequences: Iterable[str] | str = ("T2SPIR",)) -> Iterator[Volume]:
    """Yield every volume of a CHAOS tree, patient by patient (CT first, ids in natural order).

    The tree is listed and checked before the first volume is read, so a layout error surfaces at once.

    Args:
        root: a CHAOS root (CT/, MR/), a CT/ or MR/ folder, or one patient folder.
        modalities: "CT" and/or "MR".
        sequences: MR sequences to read per MR patient: "T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase"
            (the T1DUAL phases share the T1DUAL/Ground masks).
    Yields:
        One `Volume` per patient and sequence.
    Raises:
        ChaosError: a tree or file CHAOS would not have; none of `modalities` present.
        ConfigError: an unknown modality or sequence.
    """
    sequences = _check_sequences(sequences)  # checked even for CT only: a typo is never silently ignored
    patients = _select(root, modalities)
    for patient in patients:  # list every series first: a missing folder fails before minutes of reading
        patient_series(patient, sequences)
    for patient in patients:
        yield from _read_patient(patient, sequences)
