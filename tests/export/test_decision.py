"""The decision policy on hand-computed logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineqc.edge.decision import DecisionPolicy, decide, decide_batch, softmax, uncertain_mask

CLASSES = ("crack", "ok", "scratch")


def logits_for(probs: list[float]) -> np.ndarray:
    return np.log(np.asarray(probs))  # softmax(log p) = p at temperature 1


def test_softmax_temperature() -> None:
    p = softmax(np.array([[0.0, math.log(3.0)]]), temperature=1.0)
    assert p[0].tolist() == pytest.approx([0.25, 0.75])
    p2 = softmax(np.array([[0.0, 2 * math.log(3.0)]]), temperature=2.0)
    assert p2[0].tolist() == pytest.approx([0.25, 0.75])


def test_ok_defect_and_each_uncertain_reason() -> None:
    policy = DecisionPolicy(
        CLASSES,
        "ok",
        temperature=1.0,
        prob_floor=0.5,
        margin=0.2,
        thresholds={"crack": 0.9, "ok": 0.6, "scratch": None},
    )
    cases = [
        ([0.1, 0.8, 0.1], "ok", None),
        ([0.95, 0.03, 0.02], "defect", None),
        ([0.4, 0.35, 0.25], "uncertain", "low_confidence"),  # 0.4 < floor 0.5
        ([0.55, 0.4, 0.05], "uncertain", "ambiguous"),  # margin 0.15 < 0.2
        ([0.85, 0.1, 0.05], "uncertain", "below_class_threshold"),  # crack needs 0.9
        ([0.0, 0.01, 0.99], "uncertain", "below_class_threshold"),  # scratch: never reached
    ]
    for probs, verdict, reason in cases:
        d = decide(logits_for([max(p, 1e-12) for p in probs]), policy)
        assert (d.verdict, d.reason) == (verdict, reason), probs
    batch = decide_batch(
        np.stack([logits_for([max(p, 1e-12) for p in c[0]]) for c in cases]), policy
    )
    assert [d.verdict for d in batch] == [c[1] for c in cases]
    assert batch[1].label == "crack" and batch[1].confidence == pytest.approx(0.95)


def test_temperature_changes_the_decision() -> None:
    logits = np.array([2.0, 0.0, 0.0])  # T=1: p_top = 0.787; T=4: 0.45
    hot = DecisionPolicy(CLASSES, "ok", temperature=4.0, prob_floor=0.5)
    cold = DecisionPolicy(CLASSES, "ok", temperature=1.0, prob_floor=0.5)
    assert decide(logits, cold).verdict == "defect"
    assert decide(logits, hot).reason == "low_confidence"
    probs = softmax(np.stack([logits, logits]), 4.0)
    assert uncertain_mask(probs, hot).tolist() == [True, True]


def test_json_round_trip_and_validation() -> None:
    policy = DecisionPolicy(CLASSES, "ok", 1.3, 0.4, 0.1, {"crack": 0.7, "scratch": None})
    assert DecisionPolicy.from_json(policy.to_json()) == policy
    with pytest.raises(ValueError, match="ok_class"):
        DecisionPolicy(CLASSES, "good")
    with pytest.raises(ValueError, match="temperature"):
        DecisionPolicy(CLASSES, "ok", temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        decide_batch(np.zeros((2, 4)), policy)


def test_an_ok_frame_unlike_every_ok_part_goes_to_review() -> None:
    policy = DecisionPolicy(("ok", "scratch"), "ok", anomaly_threshold=5.0)
    ok_logits = np.array([4.0, 0.0])
    assert decide(ok_logits, policy, anomaly=4.9).verdict == "ok"
    odd = decide(ok_logits, policy, anomaly=5.0)
    assert (odd.verdict, odd.reason, odd.label) == ("uncertain", "anomalous", "ok")
    assert decide(np.array([0.0, 4.0]), policy, anomaly=9.0).verdict == "defect"  # already out
    assert decide(ok_logits, policy).verdict == "ok"  # a model without the score
    batch = decide_batch(np.stack([ok_logits, ok_logits]), policy, np.array([1.0, 6.0]))
    assert [d.reason for d in batch] == [None, "anomalous"]
    assert DecisionPolicy.from_json(policy.to_json()) == policy
    old = {k: v for k, v in policy.to_json().items() if k != "anomaly_threshold"}
    assert DecisionPolicy.from_json(old).anomaly_threshold is None


def test_defect_first_rejects_whichever_defect_leads() -> None:
    policy = DecisionPolicy(
        CLASSES, "ok", thresholds={"crack": None, "ok": 0.8, "scratch": None}, reject_threshold=0.6
    )
    cases = [
        ([0.35, 0.3, 0.35], "defect", None),  # crack or scratch, nearly tied: a defect either way
        ([0.1, 0.85, 0.05], "ok", None),
        ([0.3, 0.5, 0.2], "uncertain", "below_class_threshold"),  # neither 0.6 defect nor 0.8 OK
        ([0.55, 0.45, 0.0], "uncertain", "below_class_threshold"),  # crack leads, 0.55 < 0.6
    ]
    logits = np.stack([logits_for([max(p, 1e-12) for p in c[0]]) for c in cases])
    batch = decide_batch(logits, policy)
    assert [(d.verdict, d.reason) for d in batch] == [c[1:] for c in cases]
    assert batch[0].label == "crack" and batch[0].confidence == pytest.approx(0.7)  # 1 - p(OK)
    assert uncertain_mask(softmax(logits), policy).tolist() == [False, False, True, True]
    # the per-class rule with the same thresholds sends the tied defect to review
    per_class = DecisionPolicy(CLASSES, "ok", thresholds=policy.thresholds)
    assert decide(logits[0], per_class).verdict == "uncertain"
    # an anomalous frame the classes call OK goes to review; a rejected one stays rejected
    anomalous = DecisionPolicy(**{**vars(policy), "anomaly_threshold": 5.0})
    scores = np.array([9.0, 9.0, 0.0, 0.0])
    assert [d.verdict for d in decide_batch(logits, anomalous, scores)][:2] == [
        "defect",
        "uncertain",
    ]
    # the bundle carries it; a policy written before it reads as per-class
    assert DecisionPolicy.from_json(policy.to_json()) == policy
    old = {k: v for k, v in policy.to_json().items() if k != "reject_threshold"}
    assert DecisionPolicy.from_json(old).reject_threshold is None
    with pytest.raises(ValueError, match="reject_threshold"):
        DecisionPolicy(CLASSES, "ok", reject_threshold=0.0)
