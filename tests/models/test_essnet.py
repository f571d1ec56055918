import dataclasses

import numpy as np
import pytest
import torch

from datasets.errors import ConfigError
from models.essnet import EssNet, EssNetConfig, ImagePool, lr_factor
from models.losses import NonFiniteLossError
from models.networks import count_parameters
from blobs import phantom


TINY = dict(ngf=8, ndf=8, n_blocks=2, batch_size=4, steps=40, steps_decay=0, seed=0)
G_TERMS = {"loss_G_A", "loss_G_B", "loss_cycle_A", "loss_cycle_B", "loss_idt_A", "loss_idt_B"}


def batch(n: int = 4, size: int = 32):
    ct, mask = phantom(n, size, seed=1, modality="CT")
    mr, _ = phantom(n, size, seed=2, modality="MR")
    return torch.from_numpy(ct).unsqueeze(1), torch.from_numpy(mask).long(), torch.from_numpy(mr).unsqueeze(1)


def params_of(model: EssNet, nets) -> set[int]:
    return {id(p) for net in nets for p in net.parameters()}


# ---- config ------------------------------------------------------------------------------------------------------
def test_config_defaults_are_the_papers():
    cfg = EssNetConfig()
    assert (cfg.ngf, cfg.ndf, cfg.n_blocks, cfg.n_layers_D) == (64, 64, 9, 3)
    assert (cfg.lambda_A, cfg.lambda_B, cfg.lambda_identity, cfg.lambda_seg) == (10.0, 10.0, 0.0, 1.0)
    assert (cfg.pool_size, cfg.lr, cfg.beta1, cfg.beta2) == (50, 2e-4, 0.5, 0.999)
    assert EssNetConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ConfigError, match="lamda_A"):
        EssNetConfig.from_dict({"lamda_A": 10.0})


@pytest.mark.parametrize(
    "field,value",
    [("ngf", 0), ("ndf", -1), ("n_blocks", -1), ("n_layers_D", 0), ("lambda_A", -1.0), ("lambda_seg", float("nan")),
     ("pool_size", -1), ("lr", 0.0), ("beta1", 1.0), ("batch_size", 0), ("seed", -1), ("seg_branch", "yes"),
     ("ngf", 8.5), ("steps", True), ("n_classes", 1)],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        EssNetConfig.from_dict({field: value})


def test_zero_total_steps_is_rejected():
    with pytest.raises(ConfigError, match="steps"):
        EssNetConfig(steps=0, steps_decay=0)


def test_lr_schedule_is_constant_then_linear_to_zero():
    assert [lr_factor(s, 2, 4) for s in range(6)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_factor(100, 2, 0) == 1.0
    model = EssNet(EssNetConfig(**{**TINY, "steps": 1, "steps_decay": 2}))
    assert model.set_lr(2) == pytest.approx(1e-4)
    assert all(g["lr"] == pytest.approx(1e-4) for opt in (model.optimizer_G, model.optimizer_D) for g in opt.param_groups)


# ---- structure and ablation --------------------------------------------------------------------------------------
def test_essnet_has_segmentor_in_the_generator_optimizer():
    model = EssNet(EssNetConfig(**TINY))
    assert model.netS is not None
    opt_G = {id(p) for g in model.optimizer_G.param_groups for p in g["params"]}
    assert opt_G == params_of(model, (model.netG_A, model.netG_B, model.netS))
    opt_D = {id(p) for g in model.optimizer_D.param_groups for p in g["params"]}
    assert opt_D == params_of(model, (model.netD_A, model.netD_B))
    real_A, mask_A, real_B = batch()
    assert set(model.optimize_parameters(real_A, mask_A, real_B)) == G_TERMS | {"loss_seg", "loss_D_A", "loss_D_B"}


def test_seg_branch_false_is_the_plain_cycleGAN():
    essnet = EssNet(EssNetConfig(**TINY))
    cyclegan = EssNet(EssNetConfig(**{**TINY, "seg_branch": False}))
    assert cyclegan.netS is None
    # same seed: the flag changes nothing but netS (the four shared networks start identical)
    for (name_e, net_e), (name_c, net_c) in zip(essnet.named_networks(), cyclegan.named_networks()):
        assert name_e == name_c
        assert all(torch.equal(x, y) for x, y in zip(net_e.state_dict().values(), net_c.state_dict().values()))
    assert [name for name, _ in cyclegan.named_networks()] == ["netG_A", "netG_B", "netD_A", "netD_B"]
    opt_G = {id(p) for g in cyclegan.optimizer_G.param_groups for p in g["params"]}
    assert opt_G == params_of(cyclegan, (cyclegan.netG_A, cyclegan.netG_B))
    n_ess = sum(count_parameters(net) for _, net in essnet.named_networks())
    n_cyc = sum(count_parameters(net) for _, net in cyclegan.named_networks())
    assert n_ess - n_cyc == count_parameters(essnet.netS) > 0
    real_A, mask_A, real_B = batch()
    losses = cyclegan.optimize_parameters(real_A, mask_A, real_B)
    assert "loss_seg" not in losses and set(losses) == G_TERMS | {"loss_D_A", "loss_D_B"}
    assert "netS" not in cyclegan.state_dict()


def test_identity_loss_only_when_weighted():
    real_A, mask_A, real_B = batch()
    off = EssNet(EssNetConfig(**TINY)).optimize_parameters(real_A, mask_A, real_B)
    on = EssNet(EssNetConfig(**{**TINY, "lambda_identity": 0.5})).optimize_parameters(real_A, mask_A, real_B)
    assert off["loss_idt_A"] == off["loss_idt_B"] == 0.0
    assert on["loss_idt_A"] > 0 and on["loss_idt_B"] > 0


def test_step_rejects_bad_image_shapes():
    model = EssNet(EssNetConfig(**TINY))
    _, mask_A, real_B = batch()
    with pytest.raises(ValueError, match="real_A"):
        model.optimize_parameters(torch.zeros(4, 1, 30, 30), mask_A, real_B)


# ---- learning ----------------------------------------------------------------------------------------------------
def test_cycle_and_segmentation_losses_fall():
    torch.manual_seed(0)
    model = EssNet(EssNetConfig(**TINY))
    real_A, mask_A, real_B = batch()
    history = [model.optimize_parameters(real_A, mask_A, real_B) for _ in range(40)]
    for term in ("loss_cycle_A", "loss_cycle_B", "loss_seg"):
        first = np.mean([h[term] for h in history[:5]])
        last = np.mean([h[term] for h in history[-5:]])
        assert last < 0.7 * first, (term, first, last)
    assert model.step == 40


def test_discriminator_loss_falls_with_generators_frozen():
    model = EssNet(EssNetConfig(**{**TINY, "pool_size": 0}))
    real_A, _, real_B = batch()
    before = {k: v.clone() for k, v in model.netG_A.state_dict().items()}
    history = [model.optimize_D_only(real_A, real_B) for _ in range(30)]
    for term in ("loss_D_A", "loss_D_B"):
        assert history[-1][term] < 0.5 * history[0][term], term
    assert all(torch.equal(v, model.netG_A.state_dict()[k]) for k, v in before.items())


def test_generator_adversarial_loss_falls_with_discriminators_frozen():
    model = EssNet(EssNetConfig(**{**TINY, "lambda_A": 0.0, "lambda_B": 0.0, "lambda_seg": 0.0}))
    real_A, mask_A, real_B = batch()
    before = {k: v.clone() for k, v in model.netD_A.state_dict().items()}
    history = [model.optimize_G_only(real_A, mask_A, real_B) for _ in range(30)]
    for term in ("loss_G_A", "loss_G_B"):
        assert history[-1][term] < 0.5 * history[0][term], term
    assert all(torch.equal(v, model.netD_A.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.netD_A.parameters())  # unfrozen again


# ---- failure and state -------------------------------------------------------------------------------------------
def test_nan_input_raises_naming_term_and_step_without_updating_weights():
    model = EssNet(EssNetConfig(**TINY))
    real_A, mask_A, real_B = batch()
    model.optimize_parameters(real_A, mask_A, real_B)
    before = {k: v.clone() for k, v in model.netG_B.state_dict().items()}
    bad_B = real_B.clone()
    bad_B[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"'loss_G_B'.*step 2"):
        model.optimize_parameters(real_A, mask_A, bad_B)
    assert all(torch.equal(v, model.netG_B.state_dict()[k]) for k, v in before.items())


def test_nan_in_discriminator_loss_is_named(monkeypatch):
    model = EssNet(EssNetConfig(**TINY))
    real_A, mask_A, real_B = batch()
    monkeypatch.setattr(model, "backward_D_basic", lambda netD, real, fake: torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"'loss_D_A'.*step 1"):
        model.optimize_parameters(real_A, mask_A, real_B)


def test_image_pool_is_seeded_and_restorable():
    images = [torch.full((2, 1, 4, 4), float(i)) for i in range(12)]
    a, b = ImagePool(3, seed=5), ImagePool(3, seed=5)
    outs_a = [a.query(x) for x in images[:6]]
    b.load_state_dict(a.state_dict(), torch.device("cpu"))
    assert all(torch.equal(a.query(x), b.query(x)) for x in images[6:])
    mixed = torch.cat(outs_a[2:]).flatten(1)[:, 0]
    assert set(mixed.tolist()) != set(range(2, 6))  # the history leaked back in
    assert torch.equal(ImagePool(0, seed=0).query(images[0]), images[0])


def test_state_dict_round_trip_continues_identically():
    cfg = EssNetConfig(**TINY)
    real_A, mask_A, real_B = batch()
    a = EssNet(cfg)
    for _ in range(3):
        a.optimize_parameters(real_A, mask_A, real_B)
    b = EssNet(dataclasses.replace(cfg))
    b.load_state_dict(a.state_dict())
    assert b.step == 3
    la, lb = a.optimize_parameters(real_A, mask_A, real_B), b.optimize_parameters(real_A, mask_A, real_B)
    assert la == lb
    for (_, na), (_, nb) in zip(a.named_networks(), b.named_networks()):
        assert all(torch.equal(x, y) for x, y in zip(na.state_dict().values(), nb.state_dict().values()))
