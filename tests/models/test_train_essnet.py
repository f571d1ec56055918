import csv
import json

import numpy as np
import pytest
import torch

from datasets.errors import ConfigError
from models.checkpoint import load_checkpoint
from models.essnet import EssNetConfig
from models.train_essnet import train_essnet


TINY = dict(ngf=8, ndf=8, n_blocks=2, batch_size=2, steps=4, steps_decay=2, pool_size=3, seed=0)


def phantom(n: int, size: int = 32, seed: int = 0, modality: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body_v, liver_v = (0.0, 0.7) if modality == "CT" else (0.4, -0.5)
    images = np.full((n, size, size), -1.0, np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        body = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
        cy, cx, r = rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.45), rng.uniform(0.12, 0.2)
        liver = (((yy - cy) / r) ** 2 + ((xx - cx) / (1.3 * r)) ** 2 < 1) & body
        images[i][body], images[i][liver] = body_v, liver_v
        masks[i] = liver
    return images, masks


@pytest.fixture(scope="module")
def data():
    ct, masks = phantom(8, seed=1)
    mr, _ = phantom(8, seed=2, modality="MR")
    return ct, masks, mr


def _read_csv(path):
    with path.open() as f:
        return list(csv.reader(f))


def test_resume_is_bit_identical(tmp_path, data):
    ct, masks, mr = data
    cfg = EssNetConfig(**TINY)
    straight = train_essnet(ct, masks, mr, cfg, tmp_path / "a", log_every=1, checkpoint_every=3)

    class Crash(RuntimeError):
        pass

    def crash_at_5(step, losses):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):  # dies after step 5; the last checkpoint is from step 3
        train_essnet(ct, masks, mr, cfg, tmp_path / "b", log_every=1, checkpoint_every=3, on_log=crash_at_5)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed = train_essnet(ct, masks, mr, cfg, tmp_path / "b", log_every=1, checkpoint_every=3)
    assert resumed.resumed_from == 3 and resumed.steps == straight.steps == 6
    a, b = load_checkpoint(straight.checkpoint_path), load_checkpoint(resumed.checkpoint_path)
    for name in ("netG_A", "netG_B", "netD_A", "netD_B", "netS"):
        for key, tensor in a[name].items():
            assert torch.equal(tensor, b[name][key]), (name, key)
    for key, tensor in a["optimizer_G"]["state"][0].items():
        assert torch.equal(tensor, b["optimizer_G"]["state"][0][key])
    assert torch.equal(a["sampler_rng"], b["sampler_rng"])
    assert _read_csv(straight.losses_path) == _read_csv(resumed.losses_path)  # rows 4, 5 logged once, not twice


def test_outputs_losses_csv_checkpoint_and_alignment(tmp_path, data):
    ct, masks, mr = data
    seen = []
    result = train_essnet(ct, masks, mr, EssNetConfig(**TINY), tmp_path, val_ct_images=ct[:3], val_ct_masks=masks[:3],
                          log_every=2, on_log=lambda s, l: seen.append(s))
    rows = _read_csv(result.losses_path)
    assert rows[0] == ["step", "loss_G_A", "loss_G_B", "loss_cycle_A", "loss_cycle_B", "loss_idt_A", "loss_idt_B",
                       "loss_seg", "loss_D_A", "loss_D_B"]
    assert [int(r[0]) for r in rows[1:]] == seen == [2, 4, 6]
    state = load_checkpoint(result.checkpoint_path)
    assert state["step"] == 6 and state["config"] == EssNetConfig(**TINY).to_dict()
    assert {"fake_A_pool", "fake_B_pool", "optimizer_G", "optimizer_D", "sampler_rng", "versions"} <= set(state)
    report = json.loads(result.alignment_path.read_text())
    assert report["generator"] == "essnet" and report["n_val_slices"] == 3
    assert 0.0 <= result.alignment_dice <= 1.0 and report["seg_alignment_dice"] == result.alignment_dice
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_cycleGAN_has_no_seg_alignment(tmp_path, data):
    ct, masks, mr = data
    cfg = EssNetConfig(**{**TINY, "seg_branch": False, "steps": 1, "steps_decay": 0})
    result = train_essnet(ct, masks, mr, cfg, tmp_path, val_ct_images=ct[:2], val_ct_masks=masks[:2])
    assert result.alignment_dice is None
    assert json.loads(result.alignment_path.read_text())["generator"] == "cyclegan"
    assert "loss_seg" not in _read_csv(result.losses_path)[0]


def test_resume_with_another_config_names_the_field(tmp_path, data):
    ct, masks, mr = data
    cfg = EssNetConfig(**{**TINY, "steps": 1, "steps_decay": 0})
    train_essnet(ct, masks, mr, cfg, tmp_path)
    with pytest.raises(ConfigError, match="lambda_seg"):
        train_essnet(ct, masks, mr, EssNetConfig(**{**TINY, "steps": 1, "steps_decay": 0, "lambda_seg": 2.0}), tmp_path)
    fresh = train_essnet(ct, masks, mr, EssNetConfig(**{**TINY, "steps": 1, "steps_decay": 0, "lambda_seg": 2.0}),
                         tmp_path, resume=False)
    assert fresh.resumed_from == 0 and len(_read_csv(fresh.losses_path)) == 2  # header + the final step


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(ct_images=np.zeros((4, 32, 30), np.float32)), "ct_images"),
        (dict(mr_images=np.zeros((4, 64, 64), np.float32)), "mr_images"),
        (dict(ct_masks=np.zeros((3, 32, 32), np.uint8)), "ct_masks"),
        (dict(val_ct_images=np.zeros((2, 32, 32), np.float32)), "val_ct"),
        (dict(log_every=0), "log_every"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(tmp_path, data, kwargs, arg):
    ct, masks, mr = data
    args = dict(ct_images=ct, ct_masks=masks, mr_images=mr, cfg=EssNetConfig(**TINY), out_dir=tmp_path) | kwargs
    with pytest.raises(ValueError, match=arg):
        train_essnet(**args)


def test_num_threads_is_applied(tmp_path, data):
    ct, masks, mr = data
    before = torch.get_num_threads()
    try:
        train_essnet(ct, masks, mr, EssNetConfig(**{**TINY, "steps": 1, "steps_decay": 0}), tmp_path, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
