"""Tests for datasets/chaos.py: the real CHAOS CT sample, and small synthetic CHAOS trees written with pydicom."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from datasets.chaos import (
    MR_SEQUENCES,
    PatientRef,
    Volume,
    count_slices,
    find_patients,
    iter_volumes,
    list_series,
    natural_key,
    read_dicom_series,
    read_masks,
    read_patient,
)
from datasets.errors import ChaosError, ConfigError, EssgridError

SAMPLE = Path("/work/shared/chaos-ct-sample")
needs_sample = pytest.mark.skipif(not (SAMPLE / "DICOM_anon").is_dir(), reason="real CHAOS sample not present")

H = W = 8


# -------------------------------------------------------------------------------------------------------------
# synthetic CHAOS writer (tiny DICOMs and PNGs)

def write_dcm(path: Path, pixels: np.ndarray, *, z: float = 0.0, series_uid: str = "1.2.3.4", modality: str = "CT",
              slope: float = 1.0, intercept: float = 0.0, pixel_spacing=(0.5, 0.75),
              iop=(1, 0, 0, 0, 1, 0), position=None, pixel_data: bool = True, **tags) -> Path:
    """One single-slice uint16 DICOM at `path`; `position` defaults to z along the slice normal of `iop`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    pixels = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = list(pixel_spacing)
    ds.ImageOrientationPatient = list(iop)
    if position is None:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        position = (np.array([-10.0, 20.0, 5.0]) + z * normal).tolist()
    ds.ImagePositionPatient = [float(p) for p in position]
    ds.SliceThickness = 3.0
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, grey: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.asarray(grey)
    im = Image.fromarray(grey.astype(bool)) if mode == "1" else Image.fromarray(grey.astype(np.uint8))
    im.save(path)
    return path


def slice_pixels(k: int, base: int = 1000) -> np.ndarray:
    """Slice k is recognisable: every pixel = base + 10 k, plus a small ramp."""
    return base + 10 * k + np.arange(H * W, dtype=np.uint16).reshape(H, W) % 3


def ct_mask(k: int) -> np.ndarray:
    """A liver blob whose size grows with k, so a mis-paired mask is detectable."""
    m = np.zeros((H, W), np.uint8)
    m[1:2 + k, 1:3] = 1
    return m


def mr_mask(k: int) -> np.ndarray:
    """Grey-coded MR mask: nominal values and in-band off-nominal ones, row per organ; k shifts the liver."""
    m = np.zeros((H, W), np.uint8)
    m[0, :2] = (63, 58)        # liver
    m[1, :2] = (126, 112)      # right kidney
    m[2, :2] = (189, 199)      # left kidney
    m[3, :2] = (252, 241)      # spleen
    m[4 + k % 4, 4] = 70       # liver, position depends on the slice
    return m


def mr_labels(k: int) -> np.ndarray:
    lab = np.zeros((H, W), np.uint8)
    lab[0, :2], lab[1, :2], lab[2, :2], lab[3, :2] = 1, 2, 3, 4
    lab[4 + k % 4, 4] = 1
    return lab


def make_ct_patient(folder: Path, n: int = 3, ground: bool = True, liver_value: int = 1, mode: str = "1") -> Path:
    """CT/<id>: DICOM files named i2 < i10 style; positions DEcrease with the name index, as in the real sample."""
    names = [f"i{k * 4}.dcm" for k in range(n)]  # i0, i4, i8, i12: lexical order would put i12 before i4
    for k, name in enumerate(names):
        write_dcm(folder / "DICOM_anon" / name, slice_pixels(k), z=-2.5 * k, intercept=-1024.0)
        if ground:
            write_png(folder / "Ground" / f"liver_GT_{k * 4}.png", ct_mask(k) * liver_value, mode)
    return folder


def make_mr_patient(folder: Path, n: int = 3, ground: bool = True, t1: bool = True, t2: bool = True) -> Path:
    """MR/<id> with T2SPIR and T1DUAL (InPhase/OutPhase, one Ground)."""
    for k in range(n):
        name = f"IMG-0001-{k * 5 + 1}.dcm"
        if t2:
            write_dcm(folder / "T2SPIR" / "DICOM_anon" / name, slice_pixels(k, 100), z=4.0 * k,
                      modality="MR", series_uid="2.1")
            if ground:
                write_png(folder / "T2SPIR" / "Ground" / name.replace(".dcm", ".png"), mr_mask(k))
        if t1:
            for phase, base, uid in (("InPhase", 300, "3.1"), ("OutPhase", 600, "3.2")):
                write_dcm(folder / "T1DUAL" / "DICOM_anon" / phase / name, slice_pixels(k, base), z=5.0 * k,
                          modality="MR", series_uid=uid)
            if ground:
                write_png(folder / "T1DUAL" / "Ground" / name.replace(".dcm", ".png"), mr_mask(k + 1))
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Train_Sets-like root: CT patients 2, 10, 1 and MR patients 3, 20 (the MR patient 20 without Ground)."""
    root = tmp_path / "Train_Sets"
    for pid in ("2", "10", "1"):
        make_ct_patient(root / "CT" / pid)
    make_mr_patient(root / "MR" / "3")
    make_mr_patient(root / "MR" / "20", ground=False)
    return root


# -------------------------------------------------------------------------------------------------------------
# the real sample

@pytest.fixture(scope="module")
def sample_volume() -> Volume:
    if not (SAMPLE / "DICOM_anon").is_dir():
        pytest.skip("real CHAOS sample not present")
    (volume,) = read_patient(SAMPLE)
    return volume


def _soft_tissue_fraction(hu: np.ndarray, liver: np.ndarray) -> float:
    inside = hu[liver]
    return float(((inside >= 0) & (inside <= 250)).mean())


def _liver_like_slices(hu: np.ndarray, liver: np.ndarray) -> int:
    """Slices whose mean HU under the mask is that of contrast-enhanced liver."""
    return sum(80 <= hu[k][liver[k]].mean() <= 200 for k in range(len(hu)) if liver[k].any())


@needs_sample
def test_sample_masks_pair_with_slices_in_name_order(sample_volume: Volume) -> None:
    hu, liver = sample_volume.image, sample_volume.liver
    assert hu.shape == liver.shape == (78, 512, 512)
    correct, reversed_ = _soft_tissue_fraction(hu, liver), _soft_tissue_fraction(hu, liver[::-1])
    assert correct > 0.97
    assert reversed_ < 0.90
    assert (1 - reversed_) > 5 * (1 - correct)  # reversed pairing puts >5x as many mask pixels on air/fat/bone
    n_slices_with_liver = int(liver.reshape(78, -1).any(1).sum())
    assert _liver_like_slices(hu, liver) >= 0.9 * n_slices_with_liver
    assert _liver_like_slices(hu, liver[::-1]) < 0.6 * n_slices_with_liver
    # slice 0 is the first file by name, and its mask is liver_GT_000.png
    assert Path(sample_volume.image_paths[0]).name == "i0000,0000b.dcm"
    assert Path(sample_volume.mask_paths[0]).name == "liver_GT_000.png"
    gt0 = np.asarray(Image.open(SAMPLE / "Ground" / "liver_GT_000.png")) > 0
    gt40 = np.asarray(Image.open(SAMPLE / "Ground" / "liver_GT_040.png")) > 0
    np.testing.assert_array_equal(liver[0], gt0)
    np.testing.assert_array_equal(liver[40], gt40)
    # ... which is NOT the order of the position tags: sorting by z would reverse the volume
    first, last = (pydicom.dcmread(p, stop_before_pixels=True) for p in sample_volume.image_paths[::77])
    assert float(first.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])


@needs_sample
def test_sample_intensities_are_hounsfield(sample_volume: Volume) -> None:
    hu = sample_volume.image
    assert hu.dtype == np.float32
    assert -1024 <= hu.min() and hu.max() <= 3071
    assert hu.min() < -900  # air: RescaleIntercept -1000 applied
    assert 50 <= float(np.median(hu[sample_volume.liver])) <= 200  # portal-venous liver
    raw = pydicom.dcmread(sample_volume.image_paths[5])
    np.testing.assert_array_equal(hu[5], raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept))


@needs_sample
def test_sample_spacing_matches_tags(sample_volume: Volume) -> None:
    tags = [pydicom.dcmread(p, stop_before_pixels=True) for p in sample_volume.image_paths[:2]]
    row, col = (float(v) for v in tags[0].PixelSpacing)
    dz = abs(float(tags[1].ImagePositionPatient[2]) - float(tags[0].ImagePositionPatient[2]))
    assert sample_volume.spacing == pytest.approx((row, col, dz))
    assert dz != pytest.approx(float(tags[0].SliceThickness))  # 2.0 mm apart, 3.2 mm thick: positions win


@needs_sample
def test_sample_as_single_patient_folder_ignores_segmentation(sample_volume: Volume) -> None:
    assert (SAMPLE / "Segmentation").is_dir()
    assert find_patients(SAMPLE) == [PatientRef("CT", SAMPLE.name, SAMPLE)]
    assert sample_volume.patient_id == SAMPLE.name
    assert (sample_volume.modality, sample_volume.sequence) == ("CT", "CT")
    assert len(sample_volume.mask_paths) == 78
    assert all(Path(p).parent.name == "Ground" for p in sample_volume.mask_paths)
    assert sample_volume.labels.max() == 1 and sample_volume.labels.dtype == np.uint8
    assert count_slices(SAMPLE) == 78
    with pytest.raises(ChaosError, match="CT patient folder where MR is expected"):
        read_patient(SAMPLE, modality="MR")


@needs_sample
def test_sample_linked_into_a_train_sets_root(tmp_path: Path) -> None:
    (tmp_path / "Train_Sets" / "CT").mkdir(parents=True)
    (tmp_path / "Train_Sets" / "CT" / "3").symlink_to(SAMPLE, target_is_directory=True)
    (series,) = list_series(tmp_path / "Train_Sets")
    assert (series.patient_id, series.n_slices, series.ground_dir.name) == ("3", 78, "Ground")
    assert count_slices(tmp_path) == 78  # the unzipped folder holding Train_Sets/
    with pytest.raises(ChaosError, match="where MR is expected"):
        next(iter_volumes(tmp_path / "Train_Sets", modalities=("MR",)))


# -------------------------------------------------------------------------------------------------------------
# names and entry points

def test_natural_key_orders_numbers_by_value() -> None:
    assert sorted(["i10", "i2", "i1"], key=natural_key) == ["i1", "i2", "i10"]
    assert sorted(["i0010,0000b", "i0002,0000b"], key=natural_key) == ["i0002,0000b", "i0010,0000b"]
    assert sorted(["IMG-0004-00010", "IMG-0004-00002"], key=natural_key) == ["IMG-0004-00002", "IMG-0004-00010"]
    assert sorted(["results10.png", "results2.png"], key=natural_key) == ["results2.png", "results10.png"]
    assert natural_key("a/b/i2.dcm") == natural_key("i2.dcm")


def test_find_patients_from_every_entry_point(tree: Path) -> None:
    refs = find_patients(tree)
    assert [(r.modality, r.patient_id) for r in refs] == [("CT", "1"), ("CT", "2"), ("CT", "10"),
                                                          ("MR", "3"), ("MR", "20")]
    assert [r.patient_id for r in find_patients(tree / "CT")] == ["1", "2", "10"]
    assert [(r.modality, r.patient_id) for r in find_patients(tree / "MR")] == [("MR", "3"), ("MR", "20")]
    assert find_patients(tree / "CT" / "10") == [PatientRef("CT", "10", tree / "CT" / "10")]
    assert find_patients(tree / "MR" / "3") == [PatientRef("MR", "3", tree / "MR" / "3")]
    assert find_patients(tree.parent) == refs  # the unzipped folder whose one subfolder is Train_Sets/


def test_patient_id_of_current_folder(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "CT" / "10")
    assert find_patients(".")[0].patient_id == "10"
    assert read_patient(".")[0].patient_id == "10"


def test_iter_volumes_reads_ct_in_name_order_with_hu_and_spacing(tree: Path) -> None:
    volumes = list(iter_volumes(tree, modalities="CT"))
    assert [v.patient_id for v in volumes] == ["1", "2", "10"]
    v = volumes[0]
    assert v.image.shape == (3, H, W) and v.image.dtype == np.float32
    assert [Path(p).name for p in v.image_paths] == ["i0.dcm", "i4.dcm", "i8.dcm"]
    for k in range(3):
        np.testing.assert_array_equal(v.image[k], slice_pixels(k) - 1024.0)
        np.testing.assert_array_equal(v.liver[k], ct_mask(k).astype(bool))
    assert v.spacing == pytest.approx((0.5, 0.75, 2.5))
    assert v.labels.dtype == np.uint8 and set(np.unique(v.labels)) == {0, 1}


def test_names_beyond_lexical_order(tmp_path: Path) -> None:
    patient = make_ct_patient(tmp_path / "7", n=4)  # i0, i4, i8, i12
    (v,) = read_patient(patient)
    assert [Path(p).name for p in v.image_paths] == ["i0.dcm", "i4.dcm", "i8.dcm", "i12.dcm"]
    assert [Path(p).name for p in v.mask_paths][-1] == "liver_GT_12.png"
    np.testing.assert_array_equal(v.image[3], slice_pixels(3) - 1024.0)
    np.testing.assert_array_equal(v.liver[3], ct_mask(3).astype(bool))


@pytest.mark.parametrize("liver_value, mode", [(1, "1"), (255, "L"), (1, "L")])
def test_ct_masks_accept_one_and_255(tmp_path: Path, liver_value: int, mode: str) -> None:
    (v,) = read_patient(make_ct_patient(tmp_path / "1", liver_value=liver_value, mode=mode))
    np.testing.assert_array_equal(v.liver[2], ct_mask(2).astype(bool))
    np.testing.assert_array_equal(v.labels[2], ct_mask(2))


def test_slope_and_oblique_orientation(tmp_path: Path) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    iop = (1, 0, 0, 0, c, s)  # tilted: the normal is (0, -s, c)
    for k in range(3):
        write_dcm(tmp_path / f"s{k}.dcm", np.full((4, 6), k), z=3.0 * k, slope=2.0, intercept=-100.0, iop=iop)
    image, spacing, paths = read_dicom_series(tmp_path)
    assert image.shape == (3, 4, 6)
    assert image[2, 0, 0] == 2 * 2.0 - 100.0
    assert spacing == pytest.approx((0.5, 0.75, 3.0))


def test_single_slice_spacing_falls_back_to_tags(tmp_path: Path) -> None:
    write_dcm(tmp_path / "a" / "x.dcm", np.zeros((H, W)), SpacingBetweenSlices=4.5)
    assert read_dicom_series(tmp_path / "a")[1][2] == pytest.approx(4.5)
    write_dcm(tmp_path / "b" / "x.dcm", np.zeros((H, W)))
    assert read_dicom_series(tmp_path / "b")[1][2] == pytest.approx(3.0)  # SliceThickness


# -------------------------------------------------------------------------------------------------------------
# MR

def test_mr_grey_codes_decode_to_labels(tree: Path) -> None:
    (v,) = read_patient(tree / "MR" / "3")
    assert (v.modality, v.sequence, v.patient_id) == ("MR", "T2SPIR", "3")
    assert v.spacing == pytest.approx((0.5, 0.75, 4.0))
    for k in range(3):
        np.testing.assert_array_equal(v.labels[k], mr_labels(k))
        np.testing.assert_array_equal(v.liver[k], mr_labels(k) == 1)
        np.testing.assert_array_equal(v.image[k], slice_pixels(k, 100))
    assert all("T2SPIR" in p and "Ground" in p for p in v.mask_paths)


def test_t1dual_phases_share_one_ground(tree: Path) -> None:
    vols = read_patient(tree / "MR" / "3", sequences=("T1DUAL_InPhase", "T1DUAL_OutPhase", "T2SPIR"))
    assert [v.sequence for v in vols] == ["T1DUAL_InPhase", "T1DUAL_OutPhase", "T2SPIR"]
    inp, outp, t2 = vols
    np.testing.assert_array_equal(inp.image[1], slice_pixels(1, 300))
    np.testing.assert_array_equal(outp.image[1], slice_pixels(1, 600))
    assert inp.spacing[2] == pytest.approx(5.0)
    np.testing.assert_array_equal(inp.labels, outp.labels)
    assert inp.labels is not outp.labels and inp.liver is not outp.liver  # each volume owns its arrays
    np.testing.assert_array_equal(inp.labels[0], mr_labels(1))  # T1DUAL/Ground, not T2SPIR/Ground
    assert inp.mask_paths == outp.mask_paths and all("T1DUAL" in p for p in inp.mask_paths)
    assert "InPhase" in inp.image_paths[0] and "OutPhase" in outp.image_paths[0]
    assert not np.array_equal(t2.labels, inp.labels)


def test_patient_without_ground_reads_images_only(tree: Path) -> None:
    vols = list(iter_volumes(tree, modalities=("MR",), sequences=("T2SPIR", "T1DUAL_OutPhase")))
    assert [(v.patient_id, v.sequence) for v in vols] == [("3", "T2SPIR"), ("3", "T1DUAL_OutPhase"),
                                                          ("20", "T2SPIR"), ("20", "T1DUAL_OutPhase")]
    for v in vols[2:]:
        assert v.liver is None and v.labels is None and v.mask_paths == ()
        assert v.image.shape == (3, H, W)
    assert count_slices(tree, sequences=MR_SEQUENCES) == 3 * 3 + 2 * 3 * 3


def test_mr_grey_value_outside_bands_is_named(tree: Path) -> None:
    bad = mr_mask(1)
    bad[6, 6] = 90
    path = write_png(tree / "MR" / "3" / "T2SPIR" / "Ground" / "IMG-0001-6.png", bad)
    with pytest.raises(ChaosError, match="grey value 90") as err:
        read_patient(tree / "MR" / "3")
    assert path.name in str(err.value)


def test_ignores_dotfiles_and_other_names(tree: Path) -> None:
    patient = tree / "CT" / "1"
    for folder in (patient / "DICOM_anon", patient / "Ground"):
        (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
        (folder / "._i0.dcm").write_bytes(b"AppleDouble")
        (folder / "Thumbs.db").write_bytes(b"junk")
        (folder / "notes.txt").write_text("not data")
    (tree / ".hidden_patient").mkdir()
    (tree / "CT" / "__MACOSX").mkdir()
    (v,) = read_patient(patient)
    assert len(v.image_paths) == len(v.mask_paths) == 3
    assert [r.patient_id for r in find_patients(tree / "CT")] == ["1", "2", "10"]


# -------------------------------------------------------------------------------------------------------------
# bad input: ChaosError naming the offending file or folder

def _raises(fn, *names: str) -> ChaosError:
    with pytest.raises(ChaosError) as err:
        fn()
    for name in names:
        assert name in str(err.value), f"{name!r} not in {err.value}"
    assert isinstance(err.value, EssgridError)
    return err.value


def test_truncated_dicom(tree: Path) -> None:
    folder = tree / "CT" / "2" / "DICOM_anon"
    shutil.copy(pydicom.data.get_testdata_file("MR_truncated.dcm"), folder / "i4.dcm")
    _raises(lambda: read_dicom_series(folder), "i4.dcm", "decoded")


def test_non_dicom_named_dcm(tree: Path) -> None:
    folder = tree / "CT" / "2" / "DICOM_anon"
    (folder / "i99.dcm").write_text("this is not a DICOM file\n" * 20)
    _raises(lambda: list(iter_volumes(tree, modalities="CT")), "i99.dcm", "not a DICOM")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    write_dcm(tmp_path / "a.dcm", np.zeros((H, W)))
    write_dcm(tmp_path / "b.dcm", np.zeros((H, W)), z=1.0, pixel_data=False)
    _raises(lambda: read_dicom_series(tmp_path), "b.dcm", "pixel data")


def test_ground_with_fewer_pngs_than_slices(tree: Path) -> None:
    ground = tree / "CT" / "10" / "Ground"
    (ground / "liver_GT_8.png").unlink()
    _raises(lambda: read_patient(tree / "CT" / "10"), str(ground), "2 mask PNGs for 3")


def test_empty_ground_folder(tree: Path) -> None:
    ground = tree / "MR" / "20" / "T2SPIR" / "Ground"
    ground.mkdir()
    _raises(lambda: read_patient(tree / "MR" / "20"), str(ground), "0 mask PNGs")


def test_mask_of_wrong_size(tree: Path) -> None:
    path = write_png(tree / "CT" / "1" / "Ground" / "liver_GT_4.png", np.zeros((H, W + 1)))
    _raises(lambda: read_patient(tree / "CT" / "1"), str(path), f"{H}x{W + 1}")


def test_unreadable_png(tree: Path) -> None:
    path = tree / "CT" / "1" / "Ground" / "liver_GT_4.png"
    path.write_bytes(b"\x89PNG broken")
    _raises(lambda: read_masks(path.parent, "CT", (3, H, W)), str(path))


def test_folder_that_is_not_chaos(tmp_path: Path) -> None:
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    err = _raises(lambda: find_patients(tmp_path / "photos"), "photos", "CT/", "DICOM_anon/", "T2SPIR/")
    assert "expected" in str(err)
    _raises(lambda: read_patient(tmp_path / "photos"), "photos", "DICOM_anon/")


def test_stray_folder_among_patients(tree: Path) -> None:
    (tree / "CT" / "5" / "dicom").mkdir(parents=True)
    _raises(lambda: find_patients(tree), str(tree / "CT" / "5"), "DICOM_anon/")


def test_mr_patient_inside_ct_folder(tree: Path) -> None:
    make_mr_patient(tree / "CT" / "4", n=1, t1=False)
    _raises(lambda: find_patients(tree), str(tree / "CT" / "4"), "MR patient")


def test_empty_dicom_folder(tree: Path) -> None:
    folder = tree / "CT" / "1" / "DICOM_anon"
    for p in folder.iterdir():
        p.unlink()
    (folder / ".DS_Store").write_bytes(b"junk")
    _raises(lambda: read_patient(tree / "CT" / "1"), str(folder), "no .dcm files")


def test_t1dual_dicom_folder_says_which_subfolder(tree: Path) -> None:
    folder = tree / "MR" / "3" / "T1DUAL" / "DICOM_anon"
    _raises(lambda: read_dicom_series(folder), str(folder), "InPhase/", "OutPhase/")


def test_two_series_mixed(tmp_path: Path) -> None:
    write_dcm(tmp_path / "a" / "1.dcm", np.zeros((H, W)), series_uid="1.1")
    write_dcm(tmp_path / "a" / "2.dcm", np.zeros((H, W)), z=1.0, series_uid="1.2")
    _raises(lambda: read_dicom_series(tmp_path / "a"), "2.dcm", "SeriesInstanceUID", "1.1")
    write_dcm(tmp_path / "b" / "1.dcm", np.zeros((H, W)))
    write_dcm(tmp_path / "b" / "2.dcm", np.zeros((H, W + 2)), z=1.0)
    _raises(lambda: read_dicom_series(tmp_path / "b"), "2.dcm", "Rows x Columns")


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for fn in (lambda: find_patients(missing), lambda: read_patient(missing),
               lambda: list(iter_volumes(missing)), lambda: read_dicom_series(missing),
               lambda: read_masks(missing, "CT", (1, H, W))):
        _raises(fn, str(missing), "does not exist")


def test_mr_asked_of_a_ct_only_folder(tree: Path) -> None:
    shutil.rmtree(tree / "MR")
    _raises(lambda: next(iter_volumes(tree, modalities=("MR",))), str(tree), "CT folder where MR is expected")
    _raises(lambda: next(iter_volumes(tree / "CT", modalities=("MR",))), "where MR is expected")
    _raises(lambda: read_patient(tree / "CT" / "1", modality="MR"), "CT patient folder where MR is expected")


def test_missing_sequence_folder(tree: Path) -> None:
    make_mr_patient(tree / "MR" / "30", n=1, t1=False)
    _raises(lambda: list(iter_volumes(tree, "MR", sequences=("T1DUAL_InPhase",))),
            str(tree / "MR" / "30" / "T1DUAL" / "DICOM_anon" / "InPhase"), "does not exist")


def test_bad_arguments_are_config_errors(tree: Path) -> None:
    with pytest.raises(ConfigError, match="T1"):
        list(iter_volumes(tree, sequences=("T1",)))
    with pytest.raises(ConfigError, match="T2"):  # checked even when only CT is read
        list(iter_volumes(tree, modalities="CT", sequences=("T2",)))
    with pytest.raises(ConfigError, match="PET"):
        list(iter_volumes(tree, modalities=("PET",)))
    with pytest.raises(ConfigError, match="modality"):
        read_masks(tree / "CT" / "1" / "Ground", "XR", (3, H, W))


def test_volume_rejects_inconsistent_shapes() -> None:
    img = np.zeros((2, H, W), np.float32)
    with pytest.raises(ValueError, match="liver shape"):
        Volume("p", "CT", "CT", img, np.zeros((3, H, W), bool), np.zeros((2, H, W), np.uint8), (1, 1, 1),
               ("a", "b"), ())
    with pytest.raises(ValueError, match="image paths"):
        Volume("p", "CT", "CT", img, None, None, (1, 1, 1), ("a",), ())
