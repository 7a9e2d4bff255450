"""Threshold selection against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lineqc.edge.decision import decide_batch, softmax, uncertain_mask
from lineqc.export.thresholds import choose_policy, class_thresholds, uncertainty_band


def test_class_threshold_is_lowest_meeting_target_precision() -> None:
    # Frames whose top class is 0, by probability of class 0 and true label:
    # 0.9 (0), 0.8 (1), 0.7 (0), 0.6 (0), 0.55 (1)
    # cut 0.9: P=1/1; 0.8: 1/2; 0.7: 2/3; 0.6: 3/4 = 0.75; 0.55: 3/5
    # -> target 0.75 gives 0.6, target 0.8 gives 0.9 (only the top frame)
    p0 = np.array([0.9, 0.8, 0.7, 0.6, 0.55])
    probs = np.stack([p0, 1 - p0], axis=1)
    labels = np.array([0, 1, 0, 0, 1])
    assert class_thresholds(probs, labels, ["a", "b"], 0.75)["a"] == pytest.approx(0.6)
    assert class_thresholds(probs, labels, ["a", "b"], 0.8)["a"] == pytest.approx(0.9)
    # class b is never the top class: no evidence, so never decided without review
    assert class_thresholds(probs, labels, ["a", "b"], 0.75)["b"] is None


def test_unreachable_precision_gives_none() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    labels = np.array([1, 1])  # every frame called "a" is really "b"
    assert class_thresholds(probs, labels, ["a", "b"], 0.5)["a"] is None


def test_uncertainty_band_by_hand() -> None:
    # top probability / margin per frame (two classes: margin = 2 p1 - 1)
    p1 = np.array([0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.999])
    probs = np.stack([p1, 1 - p1], axis=1)
    # share 0.2 of 10 frames -> at most 2 routed; cutting at the 3rd smallest routes 2
    floor, margin = uncertainty_band(probs, 0.2)
    assert floor == pytest.approx(0.7)
    assert margin == pytest.approx(0.4)
    assert int(((p1 < floor) | (2 * p1 - 1 < margin)).sum()) == 2
    assert uncertainty_band(probs, 0.0) == (pytest.approx(0.55), pytest.approx(0.1))  # none routed
    with pytest.raises(ValueError):
        uncertainty_band(probs, 1.0)


def test_band_with_disagreeing_floor_and_margin() -> None:
    # three classes: the lowest top probability and the smallest margin are different frames
    probs = np.array(
        [
            [0.45, 0.45, 0.10],  # A: top 0.45, margin 0.00
            [0.40, 0.30, 0.30],  # B: top 0.40, margin 0.10
            [0.52, 0.24, 0.24],  # C: top 0.52, margin 0.28
            [0.55, 0.44, 0.01],  # D: top 0.55, margin 0.11
            [0.80, 0.10, 0.10],
            [0.90, 0.05, 0.05],
        ]
    )
    # budget 2 frames: j=1 (floor 0.45, margin 0.10) routes {B} + {A}; j=2 (floor 0.52,
    # margin 0.11) routes {A, B} + {A, B}: still 2; j=3 (floor 0.55) would route A, B, C.
    assert uncertainty_band(probs, 0.34) == (pytest.approx(0.52), pytest.approx(0.11))
    # budget 1 frame: j=1 already routes two different frames, so nothing is routed
    assert uncertainty_band(probs, 0.17) == (pytest.approx(0.40), pytest.approx(0.0))


def test_choose_policy_reports_shares() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 3 * np.eye(3)[labels]
    policy, report = choose_policy(logits, labels, ["a", "ok", "c"], "ok", 1.2, 0.9, 0.1)
    assert policy.temperature == 1.2
    assert report["review_share_band_val"] <= 0.1
    assert report["review_share_val"] >= report["review_share_band_val"]
    assert set(policy.thresholds) == {"a", "ok", "c"}


def test_anomaly_threshold_lets_at_most_the_share_of_ok_frames_through() -> None:
    from lineqc.export.thresholds import anomaly_threshold

    scores = np.arange(100, dtype=float)
    is_ok = np.ones(100, dtype=bool)
    t = anomaly_threshold(scores, is_ok, 0.02)
    assert t == 98.0 and (scores[is_ok] >= t).sum() == 2
    assert anomaly_threshold(scores, is_ok, 0.0) > 99.0  # no OK frame reaches it
    is_ok[95:] = False  # defects score highest; only OK frames set the threshold
    assert anomaly_threshold(scores, is_ok, 0.02) == 94.0
    assert anomaly_threshold(scores, np.zeros(100, dtype=bool), 0.02) is None
    labels = np.where(is_ok, 1, 0)
    logits = np.zeros((100, 2))
    logits[:, 1] = 3.0
    policy, report = choose_policy(logits, labels, ["a", "ok"], "ok", 1.0, anomaly=scores)
    assert policy.anomaly_threshold == 94.0
    assert report["review_share_anomaly_val"] == 6 / 100  # 94 and the five defects


def test_defect_first_keeps_its_precision_and_decides_rare_defects() -> None:
    """Validation with a rare defect class (3 frames): per-class finds no threshold for it and
    sends every one of its frames to review; defect-first rejects them as defects."""
    rng = np.random.default_rng(1)
    classes = ["common", "ok", "rare"]
    labels = np.array([0] * 40 + [1] * 120 + [2] * 3)
    logits = rng.normal(0, 0.5, (len(labels), 3))
    logits[np.arange(len(labels)), labels] += 2.5
    logits[labels == 2, 0] += 2.3  # a rare defect looks much like the common one
    per_class, _ = choose_policy(logits, labels, classes, "ok", 1.0, 0.95, rule="per-class")
    first, report = choose_policy(logits, labels, classes, "ok", 1.0, 0.95)
    assert report["rule"] == "defect-first" and (first.prob_floor, first.margin) == (0, 0)
    assert first.reject_threshold is not None and per_class.reject_threshold is None
    probs = softmax(logits)
    verdicts = {
        name: np.array([d.verdict for d in decide_batch(logits, policy)])
        for name, policy in (("per-class", per_class), ("defect-first", first))
    }
    rare = labels == 2
    assert (verdicts["per-class"][rare] == "defect").sum() < rare.sum()
    assert (verdicts["defect-first"][rare] == "defect").all()
    is_defect = labels != 1
    for name, v in verdicts.items():  # both keep the target precision on what they decide
        rejected, passed = v == "defect", v == "ok"
        assert is_defect[rejected].mean() >= 0.95 and (~is_defect[passed]).mean() >= 0.95, name
    assert (verdicts["defect-first"] == "uncertain").mean() <= (
        verdicts["per-class"] == "uncertain"
    ).mean()
    assert uncertain_mask(probs, first).mean() == report["review_share_val"]
