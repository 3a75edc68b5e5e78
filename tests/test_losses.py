import math

import pytest
import torch
import torch.nn.functional as F

from merkit.errors import ConfigError, ModelInputError
from merkit.models.blocks.losses import FocalLoss, inverse_frequency_alpha


def test_focal_loss_without_alpha_at_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(7, 5), torch.randint(0, 5, (7,))
    assert torch.allclose(FocalLoss(alpha=None, gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)


def test_focal_loss_matches_hand_computed_value():
    # softmax of log-probabilities is the probabilities themselves
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]))
    target = torch.tensor([0, 1])
    loss = FocalLoss(alpha=[0.25, 0.5, 1.0], gamma=2.0)(logits, target)
    # sample 1: p_t = 0.5, alpha 0.25 -> 0.25 * 0.5^2 * ln 2 = 0.0433217
    # sample 2: p_t = 0.6, alpha 0.5  -> 0.5 * 0.4^2 * -ln 0.6 = 0.0408660
    assert loss.item() == pytest.approx((0.0433217 + 0.0408660) / 2, abs=1e-6)
    per_sample = FocalLoss(alpha=None, gamma=2.0, reduction="none")(logits, target)
    assert torch.allclose(per_sample, torch.tensor([0.25 * math.log(2), 0.16 * -math.log(0.6)]), atol=1e-6)


def test_scalar_alpha_scales_every_class_and_sum_reduction():
    torch.manual_seed(1)
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    plain = FocalLoss(gamma=1.5, reduction="sum")(logits, target)
    assert torch.allclose(FocalLoss(alpha=0.25, gamma=1.5, reduction="sum")(logits, target), 0.25 * plain)


def test_focal_loss_gradient_is_finite_for_confident_predictions():
    logits = torch.tensor([[80.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    FocalLoss(gamma=0.5)(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_rejects_bad_configuration_and_input():
    with pytest.raises(ConfigError):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ConfigError):
        FocalLoss(alpha=[1.0, -0.5])
    with pytest.raises(ModelInputError):
        FocalLoss(alpha=[1.0, 1.0])(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ModelInputError):
        FocalLoss()(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_inverse_frequency_alpha():
    # 1/10 and 1/30 normalised to mean 1 over the two present classes; the absent class gets 0
    assert torch.allclose(inverse_frequency_alpha([10, 30, 0]), torch.tensor([1.5, 0.5, 0.0]))
    with pytest.raises(ConfigError):
        inverse_frequency_alpha([0, 0])
