"""Prediction at native resolution and CHAOS-format PNG masks (CT 1-bit like Ground/, MR 8-bit liver = 63)."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.errors import EssgridError
from models.checkpoint import CheckpointError, save_checkpoint
from models.predict import (MR_LIVER_VALUE, load_unet, predict_probs, predict_volume, unet_export,
                            write_chaos_masks)
from models.unet import UNet


def tiny_unet(seed=0) -> UNet:
    torch.manual_seed(seed)
    return UNet(1, 2, base=4, depth=2)


@pytest.mark.parametrize("modality,allowed", [("CT", {0, 255}), ("MR", {0, MR_LIVER_VALUE})])
def test_predicting_writes_one_native_size_png_per_slice(tmp_path, modality, allowed):
    images = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32)).astype(np.float32)
    mask = predict_volume(tiny_unet(), images, native_shape=(40, 56))
    assert mask.dtype == bool and mask.shape == (5, 40, 56)
    paths = write_chaos_masks(mask, tmp_path / "out", modality)
    assert [p.name for p in paths] == [f"liver_GT_{k:03d}.png" for k in range(5)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    for k, p in enumerate(paths):
        im = Image.open(p)
        assert im.size == (56, 40)  # PIL: (W, H)
        assert im.mode == ("1" if modality == "CT" else "L")
        values = np.asarray(im.convert("L"))
        assert set(np.unique(values).tolist()) <= allowed
        assert np.array_equal(values > 0, mask[k])


def test_written_masks_read_back_exactly():
    mask = np.zeros((2, 12, 10), bool)
    mask[0, 3:7, 2:5] = True
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for modality, value in (("CT", 255), ("MR", 63)):
            paths = write_chaos_masks(mask, f"{d}/{modality}", modality, names=["a.png", "b.png"])
            back = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
            assert np.array_equal(back, mask.astype(np.uint8) * value)


def test_write_chaos_masks_refuses_bad_input(tmp_path):
    with pytest.raises(EssgridError, match="modality"):
        write_chaos_masks(np.zeros((1, 4, 4), bool), tmp_path, "PET")
    with pytest.raises(EssgridError, match="mask"):
        write_chaos_masks(np.zeros((4, 4), bool), tmp_path, "CT")
    with pytest.raises(EssgridError, match="names"):
        write_chaos_masks(np.zeros((2, 4, 4), bool), tmp_path, "CT", names=["x.png"])


def test_prediction_is_the_argmax_and_restores_training_mode():
    net = tiny_unet()
    net.train()
    images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    probs = predict_probs(net, images, batch_size=2)
    assert net.training  # mode restored
    assert probs.shape == (3, 2, 16, 16) and torch.allclose(probs.sum(1), torch.ones(3, 16, 16))
    with torch.no_grad():
        net.eval()
        argmax = net(torch.from_numpy(images)[:, None]).argmax(1).numpy() == 1
    same_size = predict_volume(net, images, (16, 16))
    assert np.array_equal(same_size, argmax)


def test_empty_volume_and_bad_images():
    net = tiny_unet()
    assert predict_volume(net, np.zeros((0, 16, 16), np.float32), (20, 20)).shape == (0, 20, 20)
    with pytest.raises(ValueError, match="images"):
        predict_volume(net, np.zeros((16, 16), np.float32), (20, 20))


def test_load_unet_round_trip_and_refusals(tmp_path):
    net = tiny_unet(3)
    ckpt = {"best_model": net.state_dict(), "unet": net.config(), "config": {"base": 4, "depth": 2},
            "image_size": 16, "best_step": 7, "best_val_dice": 0.9}
    unet_export(ckpt, tmp_path / "m.pt", modality="MR", sequence="T2SPIR")
    model, meta = load_unet(tmp_path / "m.pt")
    assert meta["size"] == 16 and meta["modality"] == "MR" and meta["best_step"] == 7 and meta["val_dice"] == 0.9
    assert not model.training
    images = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16)).astype(np.float32)
    assert np.array_equal(predict_volume(model, images, (24, 24)), predict_volume(net, images, (24, 24)))
    # A full training checkpoint is accepted too (its best weights).
    save_checkpoint(tmp_path / "train.pt", ckpt)
    model2, meta2 = load_unet(tmp_path / "train.pt")
    assert meta2["size"] == 16
    save_checkpoint(tmp_path / "other.pt", {"netG_A": {}})
    with pytest.raises(CheckpointError, match="other.pt.*not a U-Net"):
        load_unet(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="best_model"):
        unet_export({"unet": {}}, tmp_path / "x.pt")
