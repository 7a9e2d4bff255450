"""Focal loss against values computed by hand, and the loss factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lineqc.train.config import LossConfig, TrainConfigError
from lineqc.train.losses import FocalLoss, balanced_weights, build_loss


def test_focal_matches_hand_computed_reference() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    target = torch.tensor([0, 2])
    # p_y for each row, from the softmax definition
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(-1) / (1 + math.exp(1) + math.exp(-1))
    gamma = 2.0
    expected = -((1 - p0) ** gamma * math.log(p0) + (1 - p1) ** gamma * math.log(p1)) / 2
    got = FocalLoss(gamma)(logits, target).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(0.5 * (0.01086933 + 1.99360453), rel=1e-6)  # reference values


def test_focal_alpha_weights_each_sample_by_its_class() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    target = torch.tensor([0, 2])
    alpha = [0.25, 1.0, 3.0]
    per_sample = [FocalLoss(1.5)(logits[i : i + 1], target[i : i + 1]).item() for i in range(2)]
    got = FocalLoss(1.5, alpha)(logits, target).item()
    assert got == pytest.approx((0.25 * per_sample[0] + 3.0 * per_sample[1]) / 2, rel=1e-6)


def test_focal_at_gamma_zero_equals_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 3
    target = torch.randint(0, 5, (64,), generator=g)
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[6.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0]])
    y = torch.tensor([0])
    ratio_ce = F.cross_entropy(hard, y) / F.cross_entropy(easy, y)
    ratio_focal = FocalLoss(2.0)(hard, y) / FocalLoss(2.0)(easy, y)
    assert ratio_focal > 100 * ratio_ce


def test_focal_gradient_finite_for_confident_logits() -> None:
    logits = torch.tensor([[80.0, -80.0]], requires_grad=True)
    FocalLoss(2.0)(logits, torch.tensor([0])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_balanced_weights_inverse_frequency_mean_one() -> None:
    w = balanced_weights([80, 20, 0])
    assert w[1] == pytest.approx(4 * w[0])
    assert w[2] == 0.0
    assert (w[0] + w[1]) / 2 == pytest.approx(1.0)


def test_build_loss_variants() -> None:
    counts = [90, 10]
    ce = build_loss(LossConfig(name="ce", label_smoothing=0.1, class_weights="balanced"), counts)
    assert isinstance(ce, torch.nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    assert ce.weight is not None and ce.weight[1] / ce.weight[0] == pytest.approx(9.0)
    focal = build_loss(LossConfig(name="focal", class_weights=[1.0, 2.0]), counts)
    assert isinstance(focal, FocalLoss) and focal.alpha is not None
    with pytest.raises(TrainConfigError, match="class_weights has 3 values for 2 classes"):
        build_loss(LossConfig(class_weights=[1.0, 1.0, 1.0]), counts)
    with pytest.raises(TrainConfigError, match="label_smoothing"):
        build_loss(LossConfig(name="focal", label_smoothing=0.1), counts)
