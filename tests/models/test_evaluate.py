"""models/evaluate.py: the CHAOS sample scores as the official evaluation prints them, mask coding, folder errors."""
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from datasets.errors import ChaosError, EssgridError
from models.evaluate import evaluate_folders, format_report, liver_from_grey


def write_pngs(folder, volume, names=None, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    for k, sl in enumerate(volume):
        name = names[k] if names else f"m{k}.png"
        img = Image.fromarray(sl.astype(bool)) if mode == "1" else Image.fromarray(sl.astype(np.uint8))
        img.save(folder / name)
    return folder


@pytest.fixture(scope="module")
def sample_scores(chaos_sample):
    return evaluate_folders(chaos_sample / "Segmentation", chaos_sample / "Ground", chaos_sample / "DICOM_anon")


def test_sample_matches_the_official_chaos_evaluation(sample_scores):
    # emrekavur/CHAOS-evaluation prints DICE=0.978 RAVD=0.665 ASSD=0.734 MSSD=14 for this sample (README.md)
    m = sample_scores
    assert (round(m["dice"], 3), round(m["ravd"], 3), round(m["assd"], 3), round(m["mssd"])) == (0.978, 0.665,
                                                                                                  0.734, 14)
    assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))
    assert (m["spacing_row"], m["spacing_col"], m["spacing_slice"]) == (0.7265625, 0.7265625, 2.0)
    assert m["slices"] == 78 and m["spacing_from_dicom"] == 1.0
    assert format_report(m).splitlines()[0] == "DICE=0.978 RAVD=0.665 ASSD=0.734 MSSD=14.000"


def test_without_dicom_distances_are_in_voxels_with_a_warning_and_a_note(chaos_sample, sample_scores, caplog):
    with caplog.at_level(logging.WARNING, logger="models.evaluate"):
        m = evaluate_folders(chaos_sample / "Segmentation", chaos_sample / "Ground")
    assert "1 mm isotropic" in caplog.text
    assert m["dice"] == sample_scores["dice"] and m["ravd"] == sample_scores["ravd"]
    assert m["assd"] != pytest.approx(sample_scores["assd"], abs=1e-3)
    assert m["spacing_from_dicom"] == 0.0 and "note: no DICOM folder" in format_report(m)
    assert "note" not in format_report(sample_scores)


def test_slices_pair_by_natural_name_order(tmp_path):
    gt = np.zeros((11, 8, 8), np.uint8)
    for k in range(11):
        gt[k, :k % 8 + 1, 0] = 255          # every slice different
    write_pngs(tmp_path / "gt", gt, [f"liver_GT_{k:03d}.png" for k in range(11)])
    write_pngs(tmp_path / "pred", np.where(gt > 0, 63, 0), [f"results{k + 1}.png" for k in range(11)])  # 1..11
    m = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert m["dice"] == 1.0 and m["dice_slice_mean"] == 1.0  # "results10" after "results9": natural order


def test_mr_organ_coded_masks_score_the_liver_band(tmp_path):
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[:, :4, :4] = 63
    gt[:, 6:, 6:] = 252
    gt[0, 5, :2] = 126
    pred = np.zeros_like(gt)
    pred[:, :4, :4] = 63
    write_pngs(tmp_path / "gt", gt)
    write_pngs(tmp_path / "pred", pred)
    assert evaluate_folders(tmp_path / "pred", tmp_path / "gt")["dice"] == 1.0
    # CT ground truth: liver = 255 (or 1-bit), a single band: every non-zero pixel is liver
    write_pngs(tmp_path / "ct", np.where(pred > 0, 1, 0), mode="1")
    assert evaluate_folders(tmp_path / "pred", tmp_path / "ct")["dice"] == 1.0
    assert liver_from_grey(np.array([[[0, 255]]], np.uint8)).tolist() == [[[False, True]]]
    assert liver_from_grey(np.array([[[60, 126, 252, 0]]], np.uint8)).tolist() == [[[True, False, False, False]]]


def _two(tmp_path, shape=(3, 6, 6)):
    vol = np.zeros(shape, np.uint8)
    vol[:, 2:4, 2:4] = 255
    return write_pngs(tmp_path / "pred", vol), write_pngs(tmp_path / "gt", vol)


def test_missing_folder(tmp_path):
    pred, gt = _two(tmp_path)
    with pytest.raises(ChaosError, match="nowhere.*does not exist"):
        evaluate_folders(tmp_path / "nowhere", gt)
    with pytest.raises(ChaosError, match="nowhere"):
        evaluate_folders(pred, gt, tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    pred, _ = _two(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")  # hidden litter is ignored, not counted
    with pytest.raises(ChaosError, match="empty.*no PNG"):
        evaluate_folders(pred, tmp_path / "empty")


def test_different_png_counts(tmp_path):
    pred, gt = _two(tmp_path)
    (gt / "m2.png").unlink()
    with pytest.raises(ChaosError, match=r"3 PNG masks.*holds 2"):
        evaluate_folders(pred, gt)


def test_png_size_mismatch_between_and_within_folders(tmp_path):
    pred, gt = _two(tmp_path)
    write_pngs(tmp_path / "big", np.zeros((3, 7, 6), np.uint8))
    with pytest.raises(ChaosError, match="7x6"):
        evaluate_folders(tmp_path / "big", gt)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pred / "m1.png")
    with pytest.raises(ChaosError, match="m1.png.*5x5"):
        evaluate_folders(pred, gt)


def test_non_png_files(tmp_path):
    pred, gt = _two(tmp_path)
    (gt / "notes.txt").write_text("hi")
    with pytest.raises(ChaosError, match="notes.txt.*not a PNG"):
        evaluate_folders(pred, gt)
    (gt / "notes.txt").unlink()
    (pred / "m1.png").write_bytes(b"not a png")
    with pytest.raises(ChaosError, match="m1.png.*not a readable PNG"):
        evaluate_folders(pred, gt)


def test_dicom_series_of_another_size(tmp_path, chaos_sample):
    pred, gt = _two(tmp_path)
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    for p in sorted(chaos_sample.joinpath("DICOM_anon").glob("*.dcm"))[:3]:
        shutil.copy(p, dicom / p.name)
    with pytest.raises(EssgridError, match="dicom.*3 slices of 512x512.*3 of 6x6"):
        evaluate_folders(pred, gt, dicom)


def test_cli_prints_the_chaos_line_and_exits_2_on_a_bad_folder(chaos_sample, tmp_path):
    out = run_cli("evaluate", str(chaos_sample / "Segmentation"), str(chaos_sample / "Ground"),
                  "--dicom", str(chaos_sample / "DICOM_anon"), timeout=120)
    assert "DICE=0.978 RAVD=0.665 ASSD=0.734 MSSD=14.000" in out.stdout
    bad = run_cli("evaluate", str(tmp_path / "nope"), str(chaos_sample / "Ground"), check=False, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stdout + bad.stderr
