import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.essnet import EssNet, EssNetConfig
from models.train_essnet import train_essnet
from models.translate import load_generator, quality_filter, slice_dice, translate


TINY = dict(ngf=8, ndf=8, n_blocks=2, batch_size=2, steps=1, steps_decay=0, seed=0)


def slices(n: int = 5, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[1:, 8:20, 6:18] = 1  # slice 0 has no liver
    return images, masks


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    images, masks = slices(4)
    out = {}
    for seg_branch in (True, False):
        cfg = EssNetConfig(**{**TINY, "seg_branch": seg_branch})
        d = tmp_path_factory.mktemp("essnet" if seg_branch else "cyclegan")
        out[seg_branch] = train_essnet(images, masks, images, cfg, d).checkpoint_path
    return out


@pytest.mark.parametrize("n,size,batch_size", [(5, 32, 2), (3, 64, 32), (1, 32, 1)])
def test_shapes_and_masks_carried_byte_identically(checkpoints, n, size, batch_size):
    images, masks = slices(n, size)
    out = translate(checkpoints[True], images, masks, batch_size=batch_size, device="cpu")
    assert out.fake_B.shape == (n, size, size) and out.fake_B.dtype == np.float32
    assert out.fake_B.min() >= -1 and out.fake_B.max() <= 1
    assert out.masks.dtype == masks.dtype and out.masks.tobytes() == masks.tobytes()
    assert out.has_liver.tolist() == [i > 0 for i in range(n)]
    assert out.quality.shape == (n,) and out.quality.dtype == np.float32
    assert np.isnan(out.quality[0])  # empty mask
    assert np.all((out.quality[1:] >= 0) & (out.quality[1:] <= 1))


def test_batching_path_and_model_agree(checkpoints):
    images, masks = slices(5)
    loaded = load_generator(checkpoints[True], "cpu")
    a = translate(loaded, images, masks, batch_size=2)
    b = translate(checkpoints[True], images, masks, batch_size=5, device="cpu")
    np.testing.assert_allclose(a.fake_B, b.fake_B, atol=1e-5)
    np.testing.assert_array_equal(a.quality, b.quality)


def test_quality_is_nan_without_netS(checkpoints):
    netG_A, netS, cfg = load_generator(checkpoints[False], "cpu")
    assert netS is None and not cfg.seg_branch
    images, masks = slices(4)
    out = translate((netG_A, netS, cfg), images, masks)
    assert np.isnan(out.quality).all()


def test_translate_accepts_a_live_model_and_restores_its_mode():
    model = EssNet(EssNetConfig(**TINY))
    images, masks = slices(3)
    out = translate(model, images, masks)
    assert out.fake_B.shape == images.shape
    assert model.netG_A.training and model.netS.training


def test_slice_dice_and_quality_filter():
    target = np.zeros((3, 4, 4), bool)
    target[1:, :2] = True
    pred = target.copy()
    pred[2] = False
    dice = slice_dice(pred, target)
    assert np.isnan(dice[0]) and dice[1] == 1.0 and dice[2] == 0.0
    has_liver = target.any(axis=(1, 2))
    assert quality_filter(has_liver, dice).tolist() == [False, True, True]
    assert quality_filter(has_liver, dice, min_quality=0.5).tolist() == [False, True, False]
    assert quality_filter(has_liver, dice, require_liver=False).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="min_quality"):
        quality_filter(has_liver, dice, min_quality=2.0)


def test_bad_inputs_raise(tmp_path, checkpoints):
    images, masks = slices(3)
    with pytest.raises(ValueError, match="ct_masks"):
        translate(checkpoints[True], images, masks[:2])
    with pytest.raises(ValueError, match="batch_size"):
        translate(checkpoints[True], images, masks, batch_size=0)
    with pytest.raises(CheckpointError, match="missing.pt"):
        translate(tmp_path / "missing.pt", images, masks)
