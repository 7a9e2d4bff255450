"""Decision thresholds chosen on the validation split (applied by lineqc.edge.decision).

* The rule. ``defect-first`` (the default): the reject threshold is the lowest defect
  probability, 1 - p(OK), at which rejecting still meets the target precision on validation
  (few false rejects), and the pass threshold the lowest p(OK) at which passing meets it
  (few escapes); frames between them go to review, whichever defect class leads. A station's
  action does not depend on the defect's kind, and a validation split of a few dozen parts
  cannot give each defect class a threshold of its own: under ``per-class`` a confident
  defect of a rare class went to review. ``per-class`` keeps the rules below.
* Per-class thresholds: the lowest calibrated probability at which deciding a class (as the
  top class) still meets the target precision on validation; None when no threshold does
  (the device then sends that class to review).
* The uncertainty band: a probability floor and a top-two margin that together route at most
  ``review_share`` of validation frames to review, both cut at the same rank.
* The anomaly threshold (a model with an anomaly score): the score that at most
  ``anomaly_share`` of the validation OK frames reach; frames the classes call OK but that
  score at least this go to review.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lineqc.edge.decision import RULES, DecisionPolicy, Rule, softmax, uncertain_mask
from lineqc.train.metrics import recall_at_precision


def class_thresholds(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], target_precision: float
) -> dict[str, float | None]:
    top = probs.argmax(axis=1)
    out: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        decided = top == i
        # Among frames whose top class is i, the score threshold with the highest recall
        # whose precision is still >= target (training's metric function).
        _, threshold = recall_at_precision(
            labels[decided] == i, probs[decided, i], target_precision
        )
        out[name] = threshold
    return out


def uncertainty_band(probs: np.ndarray, review_share: float) -> tuple[float, float]:
    """(floor, margin): frames with top probability < floor or top-two margin < margin.

    Both cut at the j-th smallest value, j as large as possible while the union of the two
    stays within ``review_share`` of the frames. Ties at a cut route fewer, never more.
    """
    if not 0 <= review_share < 1:
        raise ValueError(f"review share must lie in [0, 1), not {review_share}")
    ordered = np.sort(probs, axis=1)
    p1 = ordered[:, -1]
    margin = p1 - ordered[:, -2] if probs.shape[1] > 1 else p1
    budget = int(np.floor(review_share * len(probs) + 1e-9))
    floors, margins = np.sort(p1), np.sort(margin)
    best = (0.0, 0.0)
    for j in range(min(budget, len(probs) - 1) + 1):
        floor, band = float(floors[j]), float(margins[j])
        if int(((p1 < floor) | (margin < band)).sum()) > budget:
            break
        best = (floor, band)
    return best


def anomaly_threshold(scores: np.ndarray, is_ok: np.ndarray, share: float) -> float | None:
    """The score at most ``share`` of the OK frames reach (None without OK frames)."""
    ok_scores = np.sort(np.asarray(scores, dtype=np.float64)[is_ok])
    if ok_scores.size == 0:
        return None
    allowed = int(np.floor(share * ok_scores.size + 1e-9))  # OK frames that may reach it
    if allowed == 0:
        return float(np.nextafter(ok_scores[-1], np.inf))
    return float(ok_scores[-allowed])


def choose_policy(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    ok_class: str,
    temperature: float,
    target_precision: float = 0.95,
    review_share: float = 0.05,
    anomaly: np.ndarray | None = None,
    anomaly_share: float = 0.02,
    rule: Rule = "defect-first",
) -> tuple[DecisionPolicy, dict[str, Any]]:
    """The bundle's decision policy and a report of what it does on validation.
    ``review_share`` sets the per-class rule's band; defect-first has none."""
    probs = softmax(logits, temperature)
    is_ok = labels == list(classes).index(ok_class)
    scored = None if anomaly is None else anomaly_threshold(anomaly, is_ok, anomaly_share)
    passing: float | None = None
    if rule == "defect-first":
        floor = margin = 0.0
        p_ok = probs[:, list(classes).index(ok_class)]
        _, reject = recall_at_precision(~is_ok, 1.0 - p_ok, target_precision)
        _, passing = recall_at_precision(is_ok, p_ok, target_precision)
        thresholds = {c: passing if c == ok_class else None for c in classes}
        # 0 would reject every frame; the smallest positive rejects those with any doubt
        reject = None if reject is None else max(reject, float(np.nextafter(0.0, 1.0)))
    elif rule == "per-class":
        floor, margin = uncertainty_band(probs, review_share)
        thresholds = class_thresholds(probs, labels, classes, target_precision)
        reject = None
    else:
        raise ValueError(f"decision rule must be one of {RULES}, not {rule!r}")
    policy = DecisionPolicy(
        classes=tuple(classes),
        ok_class=ok_class,
        temperature=float(temperature),
        prob_floor=floor,
        margin=margin,
        thresholds=thresholds,
        anomaly_threshold=scored,
        reject_threshold=reject,
    )
    routed = uncertain_mask(probs, policy, anomaly)
    band_only = DecisionPolicy(tuple(classes), ok_class, float(temperature), floor, margin)
    report: dict[str, Any] = {
        "rule": rule,
        "target_precision": target_precision,
        "review_share_target": review_share if rule == "per-class" else None,
        "review_share_band_val": float(uncertain_mask(probs, band_only).mean()),
        "review_share_val": float(routed.mean()),
        "unreachable_classes": (
            [c for c, t in policy.thresholds.items() if t is None]
            if rule == "per-class"
            else [name for name, t in (("reject", reject), ("pass", passing)) if t is None]
        ),
        "n_val": len(labels),
    }
    if anomaly is not None:
        without = uncertain_mask(probs, dataclasses.replace(policy, anomaly_threshold=None))
        report["anomaly_share_target"] = anomaly_share
        report["review_share_anomaly_val"] = float((routed & ~without).mean())
    return policy, report
