"""models/metrics.py: Dice/IoU against scikit-learn, surface distances against brute force, empty-mask conventions."""
import math
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import f1_score, jaccard_score

from models.metrics import (assd, compute_volume_metrics, dice, iou, mssd, ravd, slice_dice, slice_iou,
                            surface_distances, surface_voxels)

SPACING = (0.8, 0.6, 2.5)  # (row, col, slice) mm: anisotropic on purpose


def random_blob(rng: np.random.Generator, shape=(12, 20, 18), p=0.08, grow=2) -> np.ndarray:
    """A lumpy 3D blob: random seeds dilated, so it has an inside, holes and several pieces."""
    seeds = rng.random(shape) < p * 0.1
    return ndimage.binary_dilation(seeds, iterations=grow) | (rng.random(shape) < 0.01)


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by the definition: foreground with a face neighbour in the background (outside = foreground)."""
    padded = np.pad(mask, 1, constant_values=True)
    inner = np.ones(mask.shape, bool)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_distances(pred, gt, spacing):
    scale = np.array([spacing[2], spacing[0], spacing[1]])  # [Z, H, W] axes
    p = np.argwhere(brute_surface(pred)) * scale
    g = np.argwhere(brute_surface(gt)) * scale
    d = cdist(p, g)
    return d.min(axis=1), d.min(axis=0)


def test_module_imports_neither_torch_nor_ray():
    import subprocess
    code = "import sys, models.metrics, models.evaluate; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("seed", range(5))
def test_dice_and_iou_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    gt = random_blob(rng)
    pred = gt ^ (rng.random(gt.shape) < 0.1)
    assert dice(pred, gt) == pytest.approx(f1_score(gt.ravel(), pred.ravel()), abs=1e-12)
    assert iou(pred, gt) == pytest.approx(jaccard_score(gt.ravel(), pred.ravel()), abs=1e-12)


def test_slice_scores_match_sklearn_per_slice():
    rng = np.random.default_rng(7)
    gt = random_blob(rng)
    pred = gt ^ (rng.random(gt.shape) < 0.05)
    pred[0], gt[0] = False, False           # both empty
    pred[1], gt[1] = True, False            # target empty only
    pred[2] = False; gt[2, 3:6, 3:6] = True  # prediction empty only
    d, j = slice_dice(pred, gt), slice_iou(pred, gt)
    assert d.shape == j.shape == (gt.shape[0],)
    assert (d[0], j[0], d[1], j[1], d[2], j[2]) == (1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    for z in range(3, gt.shape[0]):
        assert d[z] == pytest.approx(f1_score(gt[z].ravel(), pred[z].ravel(), zero_division=1.0), abs=1e-12)
        assert j[z] == pytest.approx(jaccard_score(gt[z].ravel(), pred[z].ravel(), zero_division=1.0), abs=1e-12)
    nan_d = slice_dice(pred, gt, empty=float("nan"))
    assert math.isnan(nan_d[0]) and np.array_equal(nan_d[1:], d[1:])


@pytest.mark.parametrize("seed", range(4))
def test_surface_distances_match_brute_force_cdist(seed):
    rng = np.random.default_rng(100 + seed)
    gt = random_blob(rng)
    pred = ndimage.binary_dilation(gt) if seed % 2 else random_blob(rng)
    pred[:, :2, :] |= rng.random(pred[:, :2, :].shape) < 0.3  # touch the array edge: outside counts as foreground
    a, b = surface_distances(pred, gt, SPACING)
    ra, rb = brute_distances(pred, gt, SPACING)
    np.testing.assert_allclose(np.sort(a), np.sort(ra), atol=1e-9)
    np.testing.assert_allclose(np.sort(b), np.sort(rb), atol=1e-9)
    pooled = np.concatenate([ra, rb])
    assert assd(pred, gt, SPACING) == pytest.approx(pooled.mean(), abs=1e-9)
    assert mssd(pred, gt, SPACING) == pytest.approx(pooled.max(), abs=1e-9)
    assert np.array_equal(surface_voxels(gt), brute_surface(gt))


def test_spacing_order_is_row_col_slice():
    gt = np.zeros((9, 9, 9), bool)
    gt[4, 4, 4] = True
    for axis, expected in ((0, 3 * 2.5), (1, 3 * 0.8), (2, 3 * 0.6)):  # Z -> slice, H -> row, W -> col
        pred = np.zeros_like(gt)
        pred[tuple(7 if a == axis else 4 for a in range(3))] = True
        assert mssd(pred, gt, SPACING) == pytest.approx(expected)


def test_identical_masks_score_perfectly():
    gt = random_blob(np.random.default_rng(3))
    m = compute_volume_metrics(gt, gt.copy(), SPACING)
    assert m == {"dice": 1.0, "iou": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0}


def test_ravd_is_in_percent_and_absolute():
    gt = np.zeros((2, 10, 10), bool)
    gt[0] = True                      # 100 voxels
    pred = gt.copy()
    pred[1, :5, :] = True             # 150 voxels
    assert ravd(pred, gt) == pytest.approx(50.0)
    assert ravd(gt.copy(), gt) == 0.0
    smaller = gt.copy()
    smaller[0, :2] = False           # 80 voxels
    assert ravd(smaller, gt) == pytest.approx(20.0)


def test_both_empty():
    z = np.zeros((3, 5, 5), bool)
    assert compute_volume_metrics(z, z, SPACING) == {"dice": 1.0, "iou": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0}
    assert dice(z, z) == iou(z, z) == 1.0
    m = compute_volume_metrics(z, z, SPACING, empty=float("nan"))
    assert all(math.isnan(v) for v in m.values()), m
    assert math.isnan(dice(z, z, empty=float("nan"))) and math.isnan(iou(z, z, empty=float("nan")))


def test_target_empty_prediction_not():
    gt = np.zeros((3, 5, 5), bool)
    pred = gt.copy()
    pred[1, 2, 2] = True
    m = compute_volume_metrics(pred, gt, SPACING)
    assert m == {"dice": 0.0, "iou": 0.0, "ravd": math.inf, "assd": math.inf, "mssd": math.inf}
    assert dice(pred, gt, empty=float("nan")) == 0.0


def test_prediction_empty_target_not():
    pred = np.zeros((3, 5, 5), bool)
    gt = pred.copy()
    gt[1, 2, 2] = True
    m = compute_volume_metrics(pred, gt, SPACING)
    assert m == {"dice": 0.0, "iou": 0.0, "ravd": 100.0, "assd": math.inf, "mssd": math.inf}
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(pred, gt, SPACING)


@pytest.mark.parametrize("call", [
    lambda: dice(np.zeros((2, 3)), np.zeros((3, 2))),
    lambda: slice_dice(np.zeros((3, 3)), np.zeros((3, 3))),
    lambda: dice(np.zeros(3), np.zeros(3), empty=2.0),
    lambda: compute_volume_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0)),
    lambda: compute_volume_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 0.0, 1.0)),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_a_mask_filling_the_volume_has_no_surface_and_scores_inf():
    import math

    import numpy as np

    from models.metrics import compute_volume_metrics

    gt = np.zeros((4, 16, 16), bool)
    gt[1:3, 4:8, 4:8] = True
    m = compute_volume_metrics(np.ones((4, 16, 16), bool), gt, (1.5, 1.5, 6.0))
    assert math.isinf(m["assd"]) and math.isinf(m["mssd"]) and 0 < m["dice"] < 1
