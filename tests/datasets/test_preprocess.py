"""datasets/preprocess.py: CT window, MR normalisation, resizing and the inverse used for scoring."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.chaos import Volume
from datasets.preprocess import (CT_WINDOW, normalise_image, normalize_mr, preprocess_volume, resize_mask,
                                 resize_to_native, window_ct)


def _volume(modality: str, shape=(3, 40, 48), seed: int = 0, masks: bool = True) -> Volume:
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    liver = ((yy - h / 2) / (0.2 * h)) ** 2 + ((xx - w / 3) / (0.2 * w)) ** 2 < 1
    if modality == "CT":
        image = np.where(body, 40.0, -1000.0) + np.where(liver, 60.0, 0.0) + rng.normal(0, 20, (z, h, w))
    else:
        image = np.where(body, 400.0, 5.0) + np.where(liver, -150.0, 0.0) + rng.normal(0, 10, (z, h, w))
        image[:, 3, 3] = 1e5  # one hot pixel must not squash the range
    liver3 = np.broadcast_to(liver, (z, h, w)).copy()
    return Volume(patient_id="7", modality=modality, sequence="CT" if modality == "CT" else "T2SPIR",
                  image=image.astype(np.float32), liver=liver3 if masks else None,
                  labels=liver3.astype(np.uint8) if masks else None, spacing=(0.7, 0.8, 3.0),
                  image_paths=tuple(f"i{k}.dcm" for k in range(z)),
                  mask_paths=tuple(f"m{k}.png" for k in range(z)) if masks else ())


def test_ct_window_maps_window_edges_to_minus_one_and_one():
    lo, hi = CT_WINDOW
    out = window_ct(np.array([-3000.0, lo, (lo + hi) / 2, hi, 3000.0]))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)
    assert out.dtype == np.float32


def test_ct_window_rejects_empty_window():
    with pytest.raises(ValueError, match="window"):
        window_ct(np.zeros(3), (100, 100))


def test_mr_normalisation_uses_body_percentiles_not_outliers():
    vol = _volume("MR")
    out = normalize_mr(vol.image)
    assert out.min() >= -1 and out.max() <= 1
    h, w = vol.image.shape[1:]
    body_not_liver = out[:, h // 2, int(w * 0.85)]
    liver = out[:, h // 2, w // 3]
    background = out[:, :3, :3]
    assert background.mean() < -0.9  # air (noise around 5) sits at the bottom of the range
    # the hot pixel is clipped; liver and body keep most of the range instead of collapsing near -1
    assert liver.mean() < body_not_liver.mean() - 0.5
    assert out[0, 3, 3] == 1.0


def test_mr_normalisation_constant_volume_is_minus_one():
    np.testing.assert_array_equal(normalize_mr(np.full((2, 4, 4), 7.0)), -1)


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("size", [16, 64])
def test_preprocess_volume_range_shapes_and_native_fields(modality, size):
    vol = _volume(modality)
    pv = preprocess_volume(vol, size)
    assert pv.image.shape == (3, size, size) and pv.image.dtype == np.float32
    assert pv.image.min() >= -1 and pv.image.max() <= 1 and pv.image.max() > pv.image.min()
    assert pv.mask.shape == (3, size, size) and pv.mask.dtype == np.uint8
    assert set(np.unique(pv.mask)) <= {0, 1} and pv.mask.any()
    assert pv.native_shape == (40, 48) and pv.spacing == (0.7, 0.8, 3.0)
    np.testing.assert_array_equal(pv.mask_native, vol.liver)
    assert pv.patient_id == "7" and pv.modality == modality and pv.n_slices == 3 and pv.size == size


def test_preprocess_does_not_modify_input_and_handles_missing_masks():
    vol = _volume("CT", masks=False)
    before = vol.image.copy()
    pv = preprocess_volume(vol, 32)
    np.testing.assert_array_equal(vol.image, before)
    assert pv.mask is None and pv.mask_native is None


@pytest.mark.parametrize("size", [0, 4, 12.5])
def test_preprocess_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        preprocess_volume(_volume("CT"), size)


def test_mask_resize_is_nearest_neighbour():
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 3:6, 3:6] = True
    out = resize_mask(mask, 27)
    assert set(np.unique(out)) == {0, 1}
    # nearest: each native pixel becomes exactly a 3x3 block, no blurred ring
    np.testing.assert_array_equal(out[0], np.kron(mask[0], np.ones((3, 3), bool)).astype(np.uint8))


def test_resize_to_native_round_trips_shape_for_non_square_slices():
    vol = _volume("CT", shape=(2, 30, 50))
    pv = preprocess_volume(vol, 32)
    back = resize_to_native(pv.mask.astype(bool), pv.native_shape)
    assert back.shape == (2, 30, 50) and back.dtype == bool
    # nearest there and back keeps the liver where it was (up to the grid change at its edge)
    agree = (back == vol.liver).mean()
    assert agree > 0.97


def test_resize_to_native_thresholds_probabilities():
    prob = np.zeros((1, 8, 8), np.float32)
    prob[0, 2:6, 2:6] = 0.9
    prob[0, 0, 0] = 0.4  # below the threshold everywhere it spreads
    out = resize_to_native(prob, (16, 16))
    assert out.dtype == bool and out.shape == (1, 16, 16)
    assert out[0, 8, 8] and not out[0, 0, 0]
    # 2D input gives 2D output; hard masks go through nearest
    assert resize_to_native(prob[0] > 0.5, (4, 4)).shape == (4, 4)


def test_resize_to_native_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pred"):
        resize_to_native(np.zeros((1, 1, 4, 4)), (4, 4))
    with pytest.raises(ValueError, match="native_shape"):
        resize_to_native(np.zeros((1, 4, 4)), (0, 4))


def test_normalise_image_matches_preprocess_volume():
    vol = _volume("MR")
    np.testing.assert_array_equal(normalise_image(vol.image, "MR", 24), preprocess_volume(vol, 24).image)
    with pytest.raises(ValueError, match="modality"):
        normalise_image(vol.image, "PET", 24)
