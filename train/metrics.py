"""Evaluation metrics, written with numpy so that they are checked against scikit-learn.

Labels are class indices; -1 marks an image whose label the model does not know (a new
defect type in a dataset it never saw): it counts as a defect in the defect-vs-OK metrics and
is left out of the multiclass ones. Undefined values (AUROC with one class present) are None,
so that ``metrics.json`` stays valid JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lineqc.edge.decision import softmax

from . import intervals as ci
from .calibration import expected_calibration_error

MIN_PRECISION = 0.95
# The figures that carry a bootstrap interval, overall and in every slice.
INTERVAL_KEYS = (
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "auroc_defect_vs_ok",
    "recall_at_95_precision",
    "defect_recall_at_argmax",
    "ok_false_reject_rate",
)


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score, dtype=np.float64)[order]
    ranks = np.empty(positive.size, dtype=np.float64)
    # average rank over each run of tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recall_at_precision(
    positive: np.ndarray, score: np.ndarray, min_precision: float = MIN_PRECISION
) -> tuple[float | None, float | None]:
    """Highest recall over score thresholds whose precision is at least ``min_precision``.

    Returns (recall, threshold); recall 0 and threshold None when no threshold reaches the
    precision, recall None when there are no positives.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None, None
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s = np.asarray(score, dtype=np.float64)[order]
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold keeps whole runs of ties
    tp, fp, thresholds = tp[last_of_tie], fp[last_of_tie], s[last_of_tie]
    ok = tp / (tp + fp) >= min_precision
    if not ok.any():
        return 0.0, None
    best = int(np.argmax(np.where(ok, tp, -1)))
    return float(tp[best] / n_pos), float(thresholds[best])


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def _per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes that occur in the labels or the predictions (as scikit-learn)."""
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(_per_class_prf(cm)[2][present].mean()) if present.any() else 0.0


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over classes that occur in the labels (as scikit-learn)."""
    present = cm.sum(axis=1) > 0
    return float(_per_class_prf(cm)[1][present].mean()) if present.any() else 0.0


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def core(probs: np.ndarray, labels: np.ndarray, n_classes: int, ok_index: int) -> dict[str, Any]:
    """The figures of ``INTERVAL_KEYS`` (and the 95%-precision threshold, the confusion)."""
    known = labels >= 0
    defect = labels != ok_index  # unknown labels are defects
    defect_score = 1.0 - probs[:, ok_index]
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels[known], preds[known], n_classes)
    recall95, threshold95 = recall_at_precision(defect, defect_score)
    predicted_defect = preds != ok_index
    n_ok = int((~defect).sum())
    return {
        "accuracy": float((preds[known] == labels[known]).mean()) if known.any() else None,
        "macro_f1": macro_f1(cm),
        "balanced_accuracy": balanced_accuracy(cm),
        "auroc_defect_vs_ok": roc_auc(defect, defect_score),
        "recall_at_95_precision": recall95,
        "threshold_at_95_precision": threshold95,
        "defect_recall_at_argmax": float(predicted_defect[defect].mean()) if defect.any() else None,
        "ok_false_reject_rate": float(predicted_defect[~defect].mean()) if n_ok else None,
        "confusion_matrix": cm,
    }


def summary(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], ok_index: int
) -> dict[str, Any]:
    """The headline metrics of one set of calibrated probabilities."""
    known = labels >= 0
    figures = core(probs, labels, len(classes), ok_index)
    cm = figures.pop("confusion_matrix")
    auroc_per_class = {
        name: roc_auc(labels[known] == i, probs[known, i]) for i, name in enumerate(classes)
    }
    recall95_per_class = {
        name: recall_at_precision(labels[known] == i, probs[known, i])[0]
        for i, name in enumerate(classes)
        if i != ok_index
    }
    return {
        "n": int(labels.size),
        "n_unknown_label": int((~known).sum()),
        **figures,
        "auroc_per_class": auroc_per_class,
        "recall_at_95_precision_per_class": recall95_per_class,
        "ece": _none_if_nan(expected_calibration_error(probs[known], labels[known])),
        "confusion_matrix": cm.tolist(),
    }


def per_class(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Slice by class: support, precision, recall, F1, AUROC and recall at 95% precision."""
    known = labels >= 0
    cm = confusion_matrix(labels[known], probs[known].argmax(axis=1), len(classes))
    precision, recall, f1 = _per_class_prf(cm)
    out = {}
    for i, name in enumerate(classes):
        positive = labels[known] == i
        out[name] = {
            "support": int(positive.sum()),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "auroc": roc_auc(positive, probs[known, i]),
            "recall_at_95_precision": recall_at_precision(positive, probs[known, i])[0],
        }
    return out


def _class_figures(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Per class (by index): recall at argmax and one-vs-rest AUROC."""
    known = labels >= 0
    cm = confusion_matrix(labels[known], probs[known].argmax(axis=1), n_classes)
    recall = _per_class_prf(cm)[1]
    out: dict[str, Any] = {}
    for i in range(n_classes):
        positive = labels[known] == i
        out[f"{i}.recall"] = float(recall[i]) if positive.any() else None
        out[f"{i}.auroc"] = roc_auc(positive, probs[known, i])
    return out


def with_intervals(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    ok_index: int,
    clusters: Sequence[str | None] | None,
    slice_values: Mapping[str, np.ndarray] | None = None,
    reps: int = ci.REPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap intervals (resampling parts) of the headline figures, of each class's
    recall and AUROC, and of the headline figures within each slice; with their support.

    Returns ``{"intervals", "support", "bootstrap", "classes", "slices"}``: ``classes`` maps
    a class to the intervals of its recall and AUROC; ``slices`` maps kind -> value -> the
    slice's intervals and support.
    """
    ids = ci.cluster_ids(clusters, len(labels))
    masks = {
        (kind, value): values == value
        for kind, values in (slice_values or {}).items()
        for value in sorted(set(values.tolist()))
    }

    def figures(rows: np.ndarray) -> dict[str, float | None]:
        p, y = probs[rows], labels[rows]
        got = {k: v for k, v in core(p, y, len(classes), ok_index).items() if k in INTERVAL_KEYS}
        got.update(_class_figures(p, y, len(classes)))
        for (kind, value), mask in masks.items():
            inside = mask[rows]
            part = core(p[inside], y[inside], len(classes), ok_index) if inside.any() else {}
            got.update({f"{kind}\0{value}\0{k}": part.get(k) for k in INTERVAL_KEYS})
        return got

    found = ci.intervals(figures, ids, reps, seed)
    slices: dict[str, dict[str, Any]] = {}
    for (kind, value), mask in masks.items():
        slices.setdefault(kind, {})[value] = {
            "intervals": {k: found.get(f"{kind}\0{value}\0{k}") for k in INTERVAL_KEYS},
            "support": ci.support(labels[mask], ok_index, ids[mask]),
        }
    return {
        "intervals": {k: found.get(k) for k in INTERVAL_KEYS},
        "support": ci.support(labels, ok_index, ids),
        "bootstrap": ci.method(reps),
        "classes": {
            name: {"recall": found.get(f"{i}.recall"), "auroc": found.get(f"{i}.auroc")}
            for i, name in enumerate(classes)
        },
        "slices": slices,
    }


def anomaly_figures(
    scores: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    ok_index: int,
    clusters: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """How well the anomaly score (learnt from OK frames only) separates defects from OK:
    AUROC overall with its interval and support, and per defect class against OK."""
    defect = labels != ok_index
    ids = ci.cluster_ids(clusters, len(labels))
    found = ci.intervals(lambda rows: {"auroc": roc_auc(defect[rows], scores[rows])}, ids)
    per_class = {
        name: roc_auc(labels[(labels == i) | ~defect] == i, scores[(labels == i) | ~defect])
        for i, name in enumerate(classes)
        if i != ok_index
    }
    return {
        "auroc_defect_vs_ok": roc_auc(defect, scores),
        "interval": found["auroc"],
        "support": ci.support(labels, ok_index, ids),
        "auroc_per_class": per_class,
    }


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    ok_index: int,
    temperature: float,
    slice_keys: Mapping[str, Sequence[str | None]] | None = None,
    clusters: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Everything ``metrics.json`` reports, for logits of one split.

    Headline and sliced metrics use probabilities calibrated with ``temperature``; the ECE
    before calibration uses temperature 1. ``slice_keys`` maps a slice kind ("session",
    "source") to each image's value of it; ``clusters`` gives each image's part, the unit
    the bootstrap intervals resample (None: every image its own part).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("no labelled images to evaluate")
    probs = softmax(logits, temperature)
    raw = softmax(logits, 1.0)
    known = labels >= 0
    result = summary(probs, labels, classes, ok_index)
    result["ece_before"] = _none_if_nan(expected_calibration_error(raw[known], labels[known]))
    result["ece_after"] = result.pop("ece")
    result["temperature"] = float(temperature)
    result["classes"] = list(classes)
    result["ok_class"] = classes[ok_index]
    slice_values = {
        kind: np.array(["(none)" if k is None else str(k) for k in keys])
        for kind, keys in (slice_keys or {}).items()
    }
    boot = with_intervals(probs, labels, classes, ok_index, clusters, slice_values)
    result["intervals"] = boot["intervals"]
    result["support"] = boot["support"]
    result["bootstrap"] = boot["bootstrap"]
    slices: dict[str, Any] = {"class": per_class(probs, labels, classes)}
    for name, found in boot["classes"].items():
        slices["class"][name]["intervals"] = found
    for kind, values in slice_values.items():
        slices[kind] = {
            value: {
                **summary(probs[values == value], labels[values == value], classes, ok_index),
                **boot["slices"][kind][value],
            }
            for value in sorted(set(values.tolist()))
        }
    result["slices"] = slices
    return result
