"""U-Net training: learns easy blobs, resumes bit for bit, repeats with a seed, stops on NaN, selects on validation."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from datasets.errors import ConfigError, EssgridError
from datasets.preprocess import resize_image, resize_mask
from models import train_unet as T
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.losses import NonFiniteLossError
from models.predict import load_unet, predict_volume
from models.train_unet import EvalVolume, UNetTrainConfig, augment_batch, lr_at, train_unet

SIZE = 32
NATIVE = (40, 48)  # non-square and not S: exercises the resize back to native


def blob_volume(rng: np.random.Generator, z: int, native=NATIVE):
    """A bright ellipse ('liver', on the image's left) plus a dimmer round decoy on a noisy body; some slices empty."""
    h, w = native
    yy, xx = np.mgrid[:h, :w]
    img = np.full((z, h, w), -0.8, np.float32)
    mask = np.zeros((z, h, w), bool)
    for k in range(z):
        img[k] += rng.normal(0, 0.08, (h, w)).astype(np.float32)
        body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.47 * w)) ** 2 <= 1
        img[k][body] += 0.5
        dr, dc = rng.uniform(2, 4, 2) if k % 4 else (0.0, 0.0)
        if k % 4 == 0 and k:  # every 4th slice (not the first): no liver
            continue
        cy, cx = h * 0.5 + rng.uniform(-3, 3), w * 0.32 + rng.uniform(-3, 3)
        ry, rx = h * 0.22 + dr, w * 0.17 + dc
        liver = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[k][liver] = 0.6 + rng.normal(0, 0.05, liver.sum())
        mask[k] = liver
        decoy = ((yy - h * 0.5) ** 2 + (xx - w * 0.75) ** 2) <= (0.1 * w) ** 2
        img[k][decoy] = 0.1
    return np.clip(img, -1, 1), mask


def make_eval(rng, pid, z=4) -> EvalVolume:
    img, mask = blob_volume(rng, z)
    return EvalVolume(pid, np.clip(resize_image(img, SIZE), -1, 1), mask, (1.5, 1.5, 3.0), NATIVE)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    imgs, masks = [], []
    for _ in range(4):
        img, mask = blob_volume(rng, 6)
        imgs.append(np.clip(resize_image(img, SIZE), -1, 1))
        masks.append(resize_mask(mask, SIZE))
    return {
        "train_images": np.concatenate(imgs).astype(np.float32),
        "train_masks": np.concatenate(masks).astype(np.uint8),
        "val": [make_eval(rng, "v1"), make_eval(rng, "v2")],
        "test": [make_eval(rng, "t1", 5), make_eval(rng, "t2", 3)],
    }


def tiny(**kw) -> UNetTrainConfig:
    base = dict(base=4, depth=2, steps=12, batch_size=4, lr=3e-3, eval_every=4, augment=True, seed=0)
    return UNetTrainConfig(**{**base, **kw})


def run(data, cfg, **kw):
    return list(train_unet(data["train_images"], data["train_masks"], data["val"], data["test"], cfg,
                           device="cpu", num_threads=1, **kw))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_learns_easy_blobs_to_high_val_dice(data):
    cfg = tiny(base=8, depth=2, steps=80, batch_size=8, eval_every=20, lr=5e-3)
    untrained = T.UNet(1, 2, base=8, depth=2)
    v = data["val"][0]
    assert T.volume_dice(predict_volume(untrained, v.images, v.native_shape), v.mask_native) < 0.6
    events = run(data, cfg)
    final = events[-1]
    assert final.done and final.metrics["best_val_dice"] > 0.8, [e.metrics for e in events]
    assert events[0].metrics["loss"] > final.metrics["loss"]
    dices = [r["dice"] for r in final.test_results]
    assert min(dices) > 0.8, final.test_results


def test_events_and_test_results_only_on_the_final_event(data):
    events = run(data, tiny(steps=10, eval_every=4))
    assert [e.step for e in events] == [4, 8, 10]
    assert [e.done for e in events] == [False, False, True]
    assert all(e.test_results is None for e in events[:-1])
    rows = events[-1].test_results
    assert [r["patient_id"] for r in rows] == ["t1", "t2"]
    keys = {"patient_id", "dice", "iou", "ravd", "assd", "mssd", "dice_slice_mean", "iou_slice_mean", "best_step",
            "val_dice"}
    assert all(set(r) == keys for r in rows)
    assert all(0.0 <= r["dice"] <= 1.0 and 0.0 <= r["iou"] <= 1.0 for r in rows)
    assert {"loss", "val_dice", "best_val_dice", "best_step", "lr"} <= set(events[0].metrics)


def test_model_selection_keeps_the_best_validation_state(data):
    events = run(data, tiny(steps=24, eval_every=4, lr=2e-2))  # a high LR makes val Dice wander
    seen = [e.metrics["val_dice"] for e in events]
    best = max(seen)
    best_step = events[seen.index(best)].step  # ties keep the earlier one
    final = events[-1]
    assert final.metrics["best_val_dice"] == best and final.metrics["best_step"] == best_step
    assert all(r["best_step"] == best_step and r["val_dice"] == best for r in final.test_results)
    for e in events:  # best_val_dice is the running maximum
        assert e.metrics["best_val_dice"] == max(x.metrics["val_dice"] for x in events if x.step <= e.step)
    # The test scores come from the best state, not the last one.
    model = T.UNet(**final.checkpoint["unet"])
    model.load_state_dict(final.checkpoint["best_model"])
    t1 = data["test"][0]
    pred = predict_volume(model, t1.images, t1.native_shape)
    assert final.test_results[0]["dice"] == pytest.approx(T.volume_dice(pred, t1.mask_native))
    best_event = events[seen.index(best)]
    assert_same_state(final.checkpoint["best_model"], best_event.checkpoint["model"])


def test_resume_is_bit_identical_to_a_straight_run(data):
    cfg = tiny(steps=14, eval_every=5)
    straight = run(data, cfg)
    gen = train_unet(data["train_images"], data["train_masks"], data["val"], data["test"], cfg, device="cpu",
                     num_threads=1)
    first = next(gen)
    gen.close()  # the "interrupted" run
    assert first.step == 5
    buf = io.BytesIO()
    save_checkpoint(buf, first.checkpoint)  # through the file format (weights_only=True on load)
    buf.seek(0)
    resumed = run(data, cfg, checkpoint=load_checkpoint(buf))
    assert [e.step for e in resumed] == [10, 14]
    for a, b in zip(straight[1:], resumed):
        assert a.metrics == b.metrics
        assert_same_state(a.checkpoint["model"], b.checkpoint["model"])
    assert straight[-1].test_results == resumed[-1].test_results
    assert_same_state(straight[-1].checkpoint["best_model"], resumed[-1].checkpoint["best_model"])


def test_resume_from_the_final_checkpoint_repeats_the_final_event(data):
    events = run(data, tiny(steps=6, eval_every=3))
    again = run(data, tiny(steps=6, eval_every=3), checkpoint=events[-1].checkpoint)
    assert len(again) == 1 and again[0].done and again[0].test_results == events[-1].test_results


def test_same_seed_same_run_other_seed_other_run(data):
    a, b = run(data, tiny(steps=6, eval_every=6)), run(data, tiny(steps=6, eval_every=6))
    assert_same_state(a[-1].checkpoint["model"], b[-1].checkpoint["model"])
    assert a[-1].metrics == b[-1].metrics
    c = run(data, tiny(steps=6, eval_every=6, seed=1))
    assert not torch.equal(a[-1].checkpoint["model"]["outc.weight"], c[-1].checkpoint["model"]["outc.weight"])


def test_training_leaves_the_global_rng_alone(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(data, tiny(steps=2, eval_every=2))
    assert torch.equal(torch.rand(3), expected)


def test_nan_loss_stops_training_naming_term_and_step(data, monkeypatch):
    calls = {"n": 0}
    real_loss = T.dice_ce_loss

    def flaky(logits, target):
        calls["n"] += 1
        loss = real_loss(logits, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(T, "dice_ce_loss", flaky)
    with pytest.raises(NonFiniteLossError, match=r"'dice_ce'.*step 3"):
        run(data, tiny(steps=10, eval_every=5))


def test_huge_lr_diverges_into_a_nonfinite_loss_error(data, monkeypatch):
    monkeypatch.setattr(T, "lr_at", lambda step, cfg: 1e30)  # beyond any sane config: weights overflow
    with pytest.raises(NonFiniteLossError, match=r"'dice_ce' is (nan|inf).*step [2-9]"):
        run(data, tiny(steps=10, eval_every=10, augment=False))


def test_nan_images_are_refused_up_front(data):
    imgs = data["train_images"].copy()
    imgs[3, 5, 5] = np.nan
    with pytest.raises(EssgridError, match="train_images.*NaN"):
        list(train_unet(imgs, data["train_masks"], data["val"], data["test"], tiny(), device="cpu"))


@pytest.mark.parametrize("case,arg", [
    ("empty", "train_images"), ("mismatch", "train_masks"), ("indivisible", "2\\*\\*depth"),
    ("mask_values", "train_masks"), ("val_size", "val"),
])
def test_bad_training_data_names_the_argument(data, case, arg):
    imgs, masks, val = data["train_images"], data["train_masks"], data["val"]
    if case == "empty":
        imgs, masks = imgs[:0], masks[:0]
    elif case == "mismatch":
        masks = masks[:-1]
    elif case == "indivisible":
        imgs, masks = imgs[:, :30, :30], masks[:, :30, :30]
    elif case == "mask_values":
        masks = masks * 255
    elif case == "val_size":
        v = val[0]
        val = [EvalVolume(v.patient_id, np.zeros((4, 16, 16), np.float32), v.mask_native, v.spacing, v.native_shape)]
    with pytest.raises(EssgridError, match=arg):
        list(train_unet(imgs, masks, val, data["test"], tiny(), device="cpu"))


def test_eval_volume_checks_shapes():
    with pytest.raises(EssgridError, match="mask_native"):
        EvalVolume("p", np.zeros((3, 32, 32), np.float32), np.zeros((2, 40, 48), bool), (1, 1, 1), (40, 48))
    with pytest.raises(EssgridError, match="spacing"):
        EvalVolume("p", np.zeros((3, 32, 32), np.float32), np.zeros((3, 40, 48), bool), (1, 0, 1), (40, 48))


def test_resume_with_another_config_names_the_field(data):
    events = run(data, tiny(steps=4, eval_every=2))
    with pytest.raises(ConfigError, match="lr"):
        run(data, tiny(steps=4, eval_every=2, lr=1e-2), checkpoint=events[0].checkpoint)
    with pytest.raises(CheckpointError, match="optimizer"):
        run(data, tiny(steps=4, eval_every=2), checkpoint={k: v for k, v in events[0].checkpoint.items()
                                                           if k != "optimizer"})


def test_without_validation_volumes_the_last_state_is_selected(data):
    events = list(train_unet(data["train_images"], data["train_masks"], [], data["test"], tiny(steps=6, eval_every=3),
                             device="cpu"))
    final = events[-1]
    assert math.isnan(final.metrics["val_dice"]) and final.metrics["best_step"] == 6
    assert_same_state(final.checkpoint["best_model"], final.checkpoint["model"])


def test_export_round_trip_predicts_the_same(data, tmp_path):
    from models.predict import unet_export

    final = run(data, tiny(steps=4, eval_every=4))[-1]
    unet_export(final.checkpoint, tmp_path / "unet.pt", modality="MR", sequence="T2SPIR")
    model, meta = load_unet(tmp_path / "unet.pt")
    assert meta["size"] == SIZE and meta["config"]["base"] == 4 and meta["best_step"] == 4
    t1 = data["test"][0]
    pred = predict_volume(model, t1.images, t1.native_shape)
    assert T.volume_dice(pred, t1.mask_native) == pytest.approx(final.test_results[0]["dice"])


# ---- config, schedule, augmentation ---------------------------------------------------------------------------------
def test_config_from_dict_rejects_unknown_keys_and_checks_ranges():
    assert UNetTrainConfig.from_dict({"base": 8, "steps": 5}).base == 8
    with pytest.raises(ConfigError, match="stepz.*did you mean 'steps'"):
        UNetTrainConfig.from_dict({"stepz": 10})
    for field, value in [("steps", 0), ("depth", 9), ("lr", 0.0), ("lr", 1.5), ("batch_size", True),
                         ("weight_decay", -1.0), ("augment", 1), ("schedule", "step"), ("warmup_steps", 500)]:
        with pytest.raises(ConfigError, match=field):
            UNetTrainConfig.from_dict({field: value})
    cfg = UNetTrainConfig()
    assert UNetTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


def test_lr_schedule_is_a_pure_function_of_the_step():
    cfg = UNetTrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(55, cfg) == pytest.approx(0.55e-3)
    assert lr_at(70, dataclasses.replace(cfg, schedule="constant")) == 1e-3


def test_augmentation_keeps_shapes_ranges_and_binary_masks_and_is_seeded(data):
    x = torch.from_numpy(data["train_images"][:8]).unsqueeze(1)
    y = torch.from_numpy(data["train_masks"][:8]).long()

    def aug(seed):
        return augment_batch(x, y, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))

    xa, ya = aug(0)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert xa.min() >= -1 and xa.max() <= 1 and set(ya.unique().tolist()) <= {0, 1}
    assert not torch.equal(xa, x)
    xb, yb = aug(0)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    moved = (ya != y).flatten(1).any(1)
    assert moved.any() and not moved.all()  # some slices warped (p = 0.5), others only intensity-jittered
    # No flips: the liver's centre of mass stays on the same side.
    cols = torch.arange(SIZE, dtype=torch.float32)
    has = ya.sum((1, 2)) > 0
    com = (ya.float().sum(1) * cols).sum(1)[has] / ya.float().sum((1, 2))[has]
    assert (com < SIZE / 2).all()


def test_score_volume_slice_means_skip_empty_slices_and_survive_a_full_prediction():
    gt = np.zeros((3, 8, 8), bool)
    gt[1, 2:5, 2:5] = True
    exact = T.score_volume(gt.copy(), gt, (1.0, 1.0, 2.0))
    assert exact["dice"] == 1.0 and exact["assd"] == 0.0 and exact["dice_slice_mean"] == 1.0  # slices 0, 2 left out
    fp = gt.copy()
    fp[0, 0, 0] = True  # a false positive on an empty slice: that slice scores 0 and counts
    assert T.score_volume(fp, gt, (1.0, 1.0, 2.0))["dice_slice_mean"] == pytest.approx(0.5)
    full = T.score_volume(np.ones_like(gt), gt, (1.0, 1.0, 2.0))  # no surface inside the array
    assert full["dice"] == pytest.approx(2 * 9 / (192 + 9)) and math.isinf(full["assd"]) and math.isinf(full["mssd"])
    nothing = T.score_volume(np.zeros_like(gt), np.zeros_like(gt), (1.0, 1.0, 2.0))
    assert nothing["dice"] == 1.0 and nothing["dice_slice_mean"] == 1.0
