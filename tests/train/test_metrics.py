"""Metric functions against scikit-learn, on random and tied inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from lineqc.edge.decision import softmax
from lineqc.train.metrics import (
    balanced_accuracy,
    confusion_matrix,
    evaluate,
    macro_f1,
    recall_at_precision,
    roc_auc,
)


def sk_recall_at_precision(y: np.ndarray, s: np.ndarray, p: float = 0.95) -> float:
    precision, recall, _ = skm.precision_recall_curve(y, s)
    return float(recall[precision >= p].max())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(4, 60),
    st.sampled_from([2, 5, 1000]),  # few levels: many ties
)
def test_binary_metrics_match_sklearn(seed: int, n: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    score = rng.integers(0, levels, n) / levels + 0.3 * y * rng.random(n)
    if 0 < y.sum() < n:
        assert roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score))
    else:
        assert roc_auc(y, score) is None
    if y.any():
        assert recall_at_precision(y, score)[0] == pytest.approx(sk_recall_at_precision(y, score))
        assert recall_at_precision(y, score, 0.6)[0] == pytest.approx(
            sk_recall_at_precision(y, score, 0.6)
        )


def test_recall_at_precision_threshold_reaches_the_precision() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    score = y * 0.5 + rng.random(400)
    recall, threshold = recall_at_precision(y, score)
    assert threshold is not None and recall is not None
    flagged = score >= threshold
    assert (y & flagged).sum() / flagged.sum() >= 0.95
    assert (y & flagged).sum() / y.sum() == pytest.approx(recall)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_multiclass_metrics_match_sklearn(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 50)
    pred = np.where(rng.random(50) < 0.6, y, rng.integers(0, k, 50))
    cm = confusion_matrix(y, pred, k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(k)))
    assert macro_f1(cm) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    with np.errstate(all="ignore"):
        expected = skm.balanced_accuracy_score(y, pred)
    assert balanced_accuracy(cm) == pytest.approx(expected)


def test_evaluate_report_keys_and_values(metric_keys: tuple[str, ...]) -> None:
    rng = np.random.default_rng(1)
    classes = ["dent", "ok", "scratch"]
    labels = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3)) + 2.5 * np.eye(3)[labels]
    sessions = rng.choice(["s1", "s2"], 120).tolist()
    m = evaluate(
        logits, labels, classes, ok_index=1, temperature=1.5, slice_keys={"session": sessions}
    )
    for key in metric_keys:
        assert key in m
    probs = softmax(logits, 1.5)
    defect = labels != 1
    assert m["auroc_defect_vs_ok"] == pytest.approx(skm.roc_auc_score(defect, 1 - probs[:, 1]))
    assert m["auroc_per_class"]["dent"] == pytest.approx(
        skm.roc_auc_score(labels == 0, probs[:, 0])
    )
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, probs.argmax(1), average="macro"))
    s1 = np.array(sessions) == "s1"
    assert m["slices"]["session"]["s1"]["n"] == int(s1.sum())
    assert m["slices"]["session"]["s1"]["macro_f1"] == pytest.approx(
        skm.f1_score(labels[s1], probs[s1].argmax(1), average="macro")
    )
    assert m["slices"]["class"]["scratch"]["recall"] == pytest.approx(
        skm.recall_score(labels, probs.argmax(1), labels=[2], average=None)[0]
    )


def test_unknown_labels_count_as_defects_only() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [0.0, 2.0], [2.5, 0.0]])
    labels = np.array([0, 1, -1, -1])  # two images of a class the model does not know
    m = evaluate(logits, labels, ["ok", "crack"], ok_index=0, temperature=1.0)
    assert m["n_unknown_label"] == 2
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]
    assert m["auroc_defect_vs_ok"] == pytest.approx(
        skm.roc_auc_score([0, 1, 1, 1], 1 - softmax(logits)[:, 0])
    )
