"""The CHAOS-layout phantom: layout, DICOM tags, mask codes, anatomy, determinism, and the CHAOS reader on it."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from datasets.errors import ConfigError, EssgridError
from datasets.phantom import MR_CODES, patient_ids, write_phantom

SAMPLE = Path("/work/shared/chaos-ct-sample")
TINY = dict(ct_size=64, mr_size=64, ct_slices=(12, 14), mr_slices=(12, 12))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("phantom") / "chaos", ct_patients=2, mr_patients=2, seed=0, **TINY)


def _sorted(folder: Path, suffix: str) -> list[Path]:
    """Files in natural name order (numbers by value), as CHAOS pairs slices and masks."""
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    return sorted(folder.glob(f"*{suffix}"), key=key)


def _volume(folder: Path) -> np.ndarray:
    return np.stack([pydicom.dcmread(p).pixel_array.astype(np.float32) for p in _sorted(folder, ".dcm")])


def _masks(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in _sorted(folder, ".png")])


def test_patient_ids_follow_chaos_and_continue():
    assert patient_ids("CT", 3) == ["1", "2", "5"]
    assert patient_ids("MR", 4) == ["1", "2", "3", "5"]
    more = patient_ids("CT", 22)
    assert len(set(more)) == 22 and more[-2:] == ["31", "32"]


def test_layout_names_and_counts(tree):
    assert sorted(p.name for p in (tree / "CT").iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (tree / "MR").iterdir()) == ["1", "2"]
    for pid in ("1", "2"):
        ct = tree / "CT" / pid
        dcm, png = _sorted(ct / "DICOM_anon", ".dcm"), _sorted(ct / "Ground", ".png")
        assert 12 <= len(dcm) <= 14 and len(png) == len(dcm)
        assert dcm[0].name == "i0000,0000b.dcm" and dcm[1].name == "i0001,0000b.dcm"
        assert png[0].name == "liver_GT_000.png" and png[-1].name == f"liver_GT_{len(png) - 1:03d}.png"
        mr = tree / "MR" / pid
        t2 = _sorted(mr / "T2SPIR" / "DICOM_anon", ".dcm")
        assert len(t2) == 12 and len(_sorted(mr / "T2SPIR" / "Ground", ".png")) == 12
        assert all(p.name.startswith("IMG-") and len(p.stem) == len("IMG-0004-00001") for p in t2)
        inphase = _sorted(mr / "T1DUAL" / "DICOM_anon" / "InPhase", ".dcm")
        outphase = _sorted(mr / "T1DUAL" / "DICOM_anon" / "OutPhase", ".dcm")
        assert len(inphase) == len(outphase) == len(_sorted(mr / "T1DUAL" / "Ground", ".png")) == 12


def test_ct_dicom_tags_and_positions(tree):
    paths = _sorted(tree / "CT" / "1" / "DICOM_anon", ".dcm")
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert (first.Rows, first.Columns) == (64, 64) and first.BitsAllocated == 16 and first.PixelRepresentation == 0
    assert float(first.RescaleIntercept) == -1000.0 and float(first.RescaleSlope) == 1.0
    assert float(first.PixelSpacing[0]) > 0 and float(first.SliceThickness) > 0
    assert first.pixel_array.dtype == np.uint16
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert all(b < a for a, b in zip(z, z[1:])), "CT table position must decrease with the file index"
    assert np.allclose(-np.diff(z), float(first.SpacingBetweenSlices), atol=1e-3)
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))


def test_default_matrix_spacings_are_chaos_like(tmp_path):
    # the field of view is physical, so a small matrix tells the pixel spacing the default matrix gets
    out = write_phantom(tmp_path / "c", ct_patients=1, mr_patients=1, seed=3, ct_size=64, mr_size=32,
                        ct_slices=(80, 80), mr_slices=(30, 30), sequences=("T2SPIR",))
    ct = pydicom.dcmread(next((out / "CT" / "1" / "DICOM_anon").glob("*.dcm")), stop_before_pixels=True)
    assert 0.6 <= float(ct.PixelSpacing[0]) * 64 / 512 <= 0.82
    assert float(ct.SpacingBetweenSlices) == pytest.approx(3.0)
    mr = pydicom.dcmread(next((out / "MR" / "1" / "T2SPIR" / "DICOM_anon").glob("*.dcm")), stop_before_pixels=True)
    assert 1.35 <= float(mr.PixelSpacing[0]) * 32 / 256 <= 1.95
    assert 6.0 <= float(mr.SpacingBetweenSlices) <= 9.5


def test_mr_dicom_tags(tree):
    echo = {}
    for folder in ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/DICOM_anon/OutPhase", "T2SPIR/DICOM_anon"):
        paths = _sorted(tree / "MR" / "1" / folder, ".dcm")
        ds = pydicom.dcmread(paths[0])
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.Modality == "MR"
        assert float(ds.MagneticFieldStrength) == 1.5 and float(ds.RepetitionTime) > 0
        assert len(ds.PixelSpacing) == 2 and len(ds.ImagePositionPatient) == 3 and float(ds.SliceThickness) > 0
        echo[folder.split("/")[-1]] = float(ds.EchoTime)
    assert echo["InPhase"] == pytest.approx(4.6, abs=0.3) and echo["OutPhase"] == pytest.approx(2.3, abs=0.3)
    assert 70.0 <= echo["DICOM_anon"] <= 80.0


def test_mask_codes_match_chaos(tree):
    ct = _masks(tree / "CT" / "1" / "Ground")
    with Image.open(_sorted(tree / "CT" / "1" / "Ground", ".png")[0]) as im:
        assert im.mode == "1"  # 1-bit PNG, as the real CHAOS CT Ground
    if SAMPLE.exists():
        with Image.open(SAMPLE / "Ground" / "liver_GT_040.png") as ref:
            assert ref.mode == "1"
    assert set(np.unique(ct).tolist()) <= {0, 1} and ct.any()
    for seq in ("T2SPIR", "T1DUAL"):
        mr = _masks(tree / "MR" / "1" / seq / "Ground")
        assert mr.dtype == np.uint8
        values = set(np.unique(mr).tolist())
        assert values <= {0, *MR_CODES.values()} and MR_CODES["liver"] in values


@pytest.mark.parametrize("folder", ["CT/1/Ground", "CT/2/Ground", "MR/1/T2SPIR/Ground", "MR/2/T1DUAL/Ground"])
def test_liver_in_the_middle_small_or_absent_at_the_ends(tree, folder):
    masks = _masks(tree / folder)
    area = ((masks == 1) | (masks == 255) | (masks == MR_CODES["liver"])).sum(axis=(1, 2)) if "CT" in folder \
        else (masks == MR_CODES["liver"]).sum(axis=(1, 2))
    z = len(area)
    assert area[z // 3: 2 * z // 3 + 1].min() > 0
    assert max(area[0], area[-1]) < 0.35 * area.max()


def test_intensities_plausible(tree):
    ct_hu = _volume(tree / "CT" / "1" / "DICOM_anon") - 1000.0
    liver = _masks(tree / "CT" / "1" / "Ground").astype(bool)
    assert 60.0 <= np.median(ct_hu[liver]) <= 160.0
    assert ct_hu[:, 0, 0].mean() < -900.0  # air outside the body
    t2 = _volume(tree / "MR" / "1" / "T2SPIR" / "DICOM_anon")
    codes = _masks(tree / "MR" / "1" / "T2SPIR" / "Ground")
    liver_t2 = np.median(t2[codes == MR_CODES["liver"]])
    assert 0.05 * t2.max() < liver_t2 < 0.9 * t2.max()
    assert liver_t2 > 3 * np.median(t2[:, :4, :4])  # above the noise floor of the background
    if (codes == MR_CODES["spleen"]).any():  # unlike CT, the spleen is brighter than the liver on T2
        assert np.median(t2[codes == MR_CODES["spleen"]]) > liver_t2


def test_out_of_phase_darkens_fat_water_interfaces(tree):
    t1 = tree / "MR" / "1" / "T1DUAL" / "DICOM_anon"
    inphase, outphase = _volume(t1 / "InPhase"), _volume(t1 / "OutPhase")
    assert outphase.shape == inphase.shape
    assert outphase.mean() < 0.9 * inphase.mean()


def test_ct_and_mr_bodies_differ(tree):
    ct = _masks(tree / "CT" / "1" / "Ground").astype(bool)
    ct2 = _masks(tree / "CT" / "2" / "Ground").astype(bool)
    mr = _masks(tree / "MR" / "1" / "T2SPIR" / "Ground") == MR_CODES["liver"]
    mr2 = _masks(tree / "MR" / "2" / "T2SPIR" / "Ground") == MR_CODES["liver"]
    assert not np.array_equal(ct, ct2) and not np.array_equal(mr, mr2)
    n = min(len(ct), len(mr))
    assert not np.array_equal(ct[:n], mr[:n])
    uid = lambda p: pydicom.dcmread(next(p.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID  # noqa: E731
    assert uid(tree / "CT" / "1" / "DICOM_anon") != uid(tree / "MR" / "1" / "T2SPIR" / "DICOM_anon")


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tree):
    again = write_phantom(tmp_path / "again", ct_patients=2, mr_patients=2, seed=0, **TINY)
    assert _tree_bytes(again) == _tree_bytes(tree)
    other = write_phantom(tmp_path / "other", ct_patients=1, mr_patients=1, seed=1, **TINY)
    first = _tree_bytes(tree)
    other_bytes = _tree_bytes(other)
    common = [k for k in other_bytes if k in first and k.endswith(".dcm")]
    assert any(other_bytes[k] != first[k] for k in common) or set(other_bytes) - set(first)


def test_refuses_a_non_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(EssgridError, match="not an empty folder"):
        write_phantom(tmp_path / "x", 1, 1, **TINY)
    with pytest.raises(ConfigError, match="ct_patients"):
        write_phantom(tmp_path / "y", -1, 1, **TINY)
    with pytest.raises(ConfigError, match="mr_slices"):
        write_phantom(tmp_path / "y", 1, 1, ct_size=64, mr_size=64, mr_slices=(5, 3))
    with pytest.raises(ConfigError, match="sequences"):
        write_phantom(tmp_path / "y", 1, 1, sequences=("T1",), **TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_phantom(empty, 1, 0, **TINY) == empty  # an existing empty folder is fine


def test_chaos_reader_reads_the_tree(tree):
    chaos = pytest.importorskip("datasets.chaos")
    volumes = list(chaos.iter_volumes(tree, sequences=("T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase")))
    assert [(v.modality, v.patient_id) for v in volumes][:2] == [("CT", "1"), ("CT", "2")]
    assert len(volumes) == 2 + 2 * 3
    for v in volumes:
        assert v.image.shape[1:] == (64, 64) and v.liver is not None and v.liver.any()
        assert all(s > 0 for s in v.spacing)
        if v.modality == "CT":
            assert set(np.unique(v.labels).tolist()) <= {0, 1}
            assert 60.0 <= np.median(v.image[v.liver]) <= 160.0  # HU after the rescale
        else:
            assert set(np.unique(v.labels).tolist()) <= {0, 1, 2, 3, 4}
