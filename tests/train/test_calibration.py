"""Temperature scaling and ECE."""

from __future__ import annotations

import numpy as np
import pytest

from lineqc.edge.decision import softmax
from lineqc.train.calibration import expected_calibration_error, fit_temperature


def overconfident(n: int, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), logits reported as scale * z (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    p = softmax(z)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return z * scale, labels


def test_temperature_recovers_scale_and_lowers_ece() -> None:
    val_logits, val_labels = overconfident(3000, 0, scale=3.0)
    t = fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(3.0, rel=0.15)
    test_logits, test_labels = overconfident(3000, 1, scale=3.0)
    before = expected_calibration_error(softmax(test_logits), test_labels)
    after = expected_calibration_error(softmax(test_logits, t), test_labels)
    assert after < before / 2


def test_ece_matches_direct_definition() -> None:
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(0, 2, (500, 3)))
    labels = rng.integers(0, 3, 500)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    expected = 0.0
    for lo in np.linspace(0, 1, 16)[:-1]:
        inside = (conf > lo) & (conf <= lo + 1 / 15 + 1e-12)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-9)


def test_perfectly_confident_and_right_has_zero_ece() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0
