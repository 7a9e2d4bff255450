"""The one decision policy: logits -> calibrated probabilities -> OK, a defect class, or uncertain.

The export chooses the parameters on the validation split and stores them in the bundle; the
device applies them. Pure numpy: this module runs on the device.

With a ``reject_threshold`` (the defect-first policy, what the export chooses), a frame whose
defect probability, 1 - p(OK) summed over every defect class, reaches it is a defect first of
all, labelled with its most likely defect class: the line's action is the same whichever
defect it is, so "a break or a crack?" is no reason to ask a person. Otherwise, or without a
reject threshold (the per-class policy), a frame is uncertain (routed to review) when, in
this order:
  1. its top probability is under ``prob_floor`` (reason ``low_confidence``),
  2. the top-two margin is under ``margin`` (reason ``ambiguous``),
  3. its top class has no threshold meeting the target precision, or its probability is under
     that class's threshold (reason ``below_class_threshold``),
  4. it would be OK but its anomaly score (a model with an OK-patch memory) is at or above
     ``anomaly_threshold`` (reason ``anomalous``): it looks unlike every OK part the model
     learnt from, a defect kind nobody labelled perhaps.
Otherwise the top class is the decision: OK when it is the OK class, else that defect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Verdict = Literal["ok", "defect", "uncertain"]
REASONS = ("low_confidence", "ambiguous", "below_class_threshold", "anomalous")
# How the export chose the thresholds (export/thresholds.py); defect-first sets reject_threshold
Rule = Literal["defect-first", "per-class"]
RULES: tuple[Rule, ...] = ("defect-first", "per-class")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (numerically stable)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class DecisionPolicy:
    classes: tuple[str, ...]
    ok_class: str
    temperature: float = 1.0
    prob_floor: float = 0.0
    margin: float = 0.0
    # class -> minimum calibrated probability to decide it; None: never decided (always review)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    anomaly_threshold: float | None = None  # None: the anomaly score is not used
    # defect-first: 1 - p(OK) at or above it rejects; None: the per-class policy alone
    reject_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.ok_class not in self.classes:
            raise ValueError(f"ok_class {self.ok_class!r} is not one of {list(self.classes)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if not (0 <= self.prob_floor <= 1 and 0 <= self.margin <= 1):
            raise ValueError("prob_floor and margin must lie in [0, 1]")
        if self.reject_threshold is not None and not 0 < self.reject_threshold <= 1:
            raise ValueError(f"reject_threshold must lie in (0, 1], not {self.reject_threshold}")
        unknown = set(self.thresholds) - set(self.classes)
        if unknown:
            raise ValueError(f"thresholds for unknown classes: {sorted(unknown)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": "softmax-temperature-floor-margin-v1",
            "classes": list(self.classes),
            "ok_class": self.ok_class,
            "temperature": self.temperature,
            "prob_floor": self.prob_floor,
            "margin": self.margin,
            "thresholds": dict(self.thresholds),
            "anomaly_threshold": self.anomaly_threshold,
            "reject_threshold": self.reject_threshold,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DecisionPolicy:
        return cls(
            classes=tuple(doc["classes"]),
            ok_class=doc["ok_class"],
            temperature=float(doc["temperature"]),
            prob_floor=float(doc["prob_floor"]),
            margin=float(doc["margin"]),
            thresholds={
                k: (None if v is None else float(v)) for k, v in doc.get("thresholds", {}).items()
            },
            anomaly_threshold=_optional(doc.get("anomaly_threshold")),
            reject_threshold=_optional(doc.get("reject_threshold")),
        )

    def threshold_vector(self) -> np.ndarray:
        """Per-class thresholds; a class without a reachable threshold gets +inf."""
        return np.array(
            [
                np.inf if self.thresholds.get(c, 0.0) is None else self.thresholds.get(c, 0.0)
                for c in self.classes
            ],
            dtype=np.float64,
        )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    label: str  # the top class, also for uncertain frames (what the model leaned to)
    confidence: float  # calibrated top probability (a defect-first reject: 1 - p(OK))
    reason: str | None  # why it is uncertain; None otherwise
    probabilities: tuple[float, ...]


def decide_batch(
    logits: np.ndarray, policy: DecisionPolicy, anomaly: np.ndarray | None = None
) -> list[Decision]:
    """Decisions for logits of shape (N, classes) (and anomaly scores (N,), if any)."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(policy.classes):
        raise ValueError(f"expected logits of shape (N, {len(policy.classes)}), got {logits.shape}")
    probs = softmax(logits, policy.temperature)
    top, reasons = _uncertain_reasons(probs, policy, anomaly)
    ok_index = policy.classes.index(policy.ok_class)
    rejected = _rejected(probs, policy)
    out = []
    for p, t, reason, reject in zip(probs, top, reasons, rejected, strict=True):
        if reject:
            t = int(np.argmax(np.where(np.arange(len(p)) == ok_index, -1.0, p)))
            out.append(Decision("defect", policy.classes[t], float(1.0 - p[ok_index]), None,
                                tuple(p.tolist())))  # fmt: skip
            continue
        verdict: Verdict = "uncertain" if reason else ("ok" if t == ok_index else "defect")
        out.append(
            Decision(verdict, policy.classes[t], float(p[t]), reason or None, tuple(p.tolist()))
        )
    return out


def decide(
    logits: Sequence[float] | np.ndarray, policy: DecisionPolicy, anomaly: float | None = None
) -> Decision:
    """The decision for one frame's logits (and its anomaly score, if the model has one)."""
    scores = None if anomaly is None else np.array([anomaly], dtype=np.float64)
    return decide_batch(np.asarray(logits)[None, :], policy, scores)[0]


def uncertain_mask(
    probs: np.ndarray, policy: DecisionPolicy, anomaly: np.ndarray | None = None
) -> np.ndarray:
    """Which rows of calibrated probabilities the policy sends to review."""
    reasons = _uncertain_reasons(probs, policy, anomaly)[1]
    return np.array([bool(r) for r in reasons], dtype=bool) & ~_rejected(probs, policy)


def _rejected(probs: np.ndarray, policy: DecisionPolicy) -> np.ndarray:
    """The rows the defect-first rule rejects (none under the per-class policy)."""
    if policy.reject_threshold is None:
        return np.zeros(len(probs), dtype=bool)
    p_ok = probs[:, policy.classes.index(policy.ok_class)]
    return np.asarray(1.0 - p_ok >= policy.reject_threshold)


def _uncertain_reasons(
    probs: np.ndarray, policy: DecisionPolicy, anomaly: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    order = np.argsort(-probs, axis=1, kind="stable")
    top = order[:, 0]
    rows = np.arange(len(probs))
    p1 = probs[rows, top]
    p2 = probs[rows, order[:, 1]] if probs.shape[1] > 1 else np.zeros(len(probs))
    below = p1 < policy.threshold_vector()[top]
    strange = np.zeros(len(probs), dtype=bool)
    if anomaly is not None and policy.anomaly_threshold is not None:
        ok = policy.classes.index(policy.ok_class)
        strange = (top == ok) & (np.asarray(anomaly) >= policy.anomaly_threshold)
    # the first reason that holds, in the order of REASONS
    conditions = [p1 < policy.prob_floor, (p1 - p2) < policy.margin, below, strange]
    reasons = np.select(conditions, list(REASONS), default="").tolist()
    return top, reasons
