import math

import pytest
import torch

from datasets.errors import EssgridError
from models.losses import GANLoss, NonFiniteLossError, check_finite, dice_ce_loss, soft_dice_loss


def _perfect_logits(target: torch.Tensor, scale: float = 50.0) -> torch.Tensor:
    one_hot = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    return (one_hot * 2 - 1) * scale


def test_gan_loss_is_mse_to_one_or_zero():
    crit = GANLoss()
    pred = torch.full((2, 1, 3, 3), 0.25)
    assert crit(pred, True).item() == pytest.approx(0.75**2)
    assert crit(pred, False).item() == pytest.approx(0.25**2)


def test_dice_ce_is_near_zero_for_perfect_prediction_and_large_for_the_inverse():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    assert dice_ce_loss(_perfect_logits(target), target).item() < 1e-3
    assert dice_ce_loss(_perfect_logits(1 - target), target).item() > 10


def test_dice_ce_is_the_equal_weight_sum():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert dice_ce_loss(logits, target).item() == pytest.approx(soft_dice_loss(logits, target).item() + ce.item())


def test_empty_target_dice_convention():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    assert soft_dice_loss(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-4)  # both empty
    assert soft_dice_loss(_perfect_logits(1 - target), target).item() == pytest.approx(1.0, abs=1e-4)  # false positive


def test_dice_ce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="logits"):
        dice_ce_loss(torch.randn(2, 2, 8, 8), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="classes"):
        dice_ce_loss(torch.randn(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))


def test_check_finite_names_term_and_step():
    check_finite({"a": 1.0}, step=3)
    with pytest.raises(NonFiniteLossError, match=r"'loss_x'.*step 7") as info:
        check_finite({"a": 1.0, "loss_x": math.inf}, step=7)
    assert isinstance(info.value, EssgridError)
