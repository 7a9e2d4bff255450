"""What a bundle makes of labelled images, as a device runs it: the device's preprocessing,
the bundle's model of one precision on ONNX Runtime, and the decision policy chosen for that
model (its thresholds, the defect-first rule, the anomaly rule).

The retrain gate compares the deployed champion with the challenger's candidate bundle this
way, and the quality benchmark judges each fold's bundle with it: both see what the line
would see, not what the training checkpoint would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineqc.datasets.labels import label_indices
from lineqc.datasets.manifest import Record
from lineqc.edge.bundle import Bundle
from lineqc.edge.decision import Decision, decide_batch

from . import runtime
from .data import load_inputs


@dataclass(frozen=True)
class Decided:
    """The raw outputs and the decisions of one bundle model on some records."""

    precision: str
    logits: np.ndarray
    anomaly: np.ndarray | None
    decisions: list[Decision]

    @property
    def verdicts(self) -> list[str]:
        return [d.verdict for d in self.decisions]


def decide_records(bundle: Bundle, precision: str, root: Path, records: list[Record]) -> Decided:
    """The bundle's ``precision`` model and that model's policy on ``records`` (read from the
    dataset folder ``root``)."""
    inputs = load_inputs(root, records, bundle.spec, f"load {len(records)} images")
    sess = runtime.session(bundle.model_path(precision))
    out = runtime.outputs(sess, inputs, desc=f"{bundle.version} {precision}")
    logits, scores = out[runtime.OUTPUT_NAME], out.get(runtime.ANOMALY)
    return Decided(
        precision, logits, scores, decide_batch(logits, bundle.policy_for(precision), scores)
    )


@dataclass
class Judged:
    """A deployed model judged on labelled records: the figures of its logits (as
    ``lineqc.train.metrics.evaluate`` computes them for a checkpoint) and its policy's
    verdicts, row by row. Shaped like a checkpoint's evaluation (``metrics``, ``records``,
    ``labels``, ``logits``), so the retrain gate compares either."""

    metrics: dict[str, Any]
    records: list[Record]
    labels: np.ndarray  # the bundle's class index per image; -1: a label the bundle lacks
    logits: np.ndarray
    verdicts: list[str]  # ok | defect | uncertain
    ok_index: int


def judge(
    bundle: Bundle,
    root: Path,
    records: list[Record],
    dataset_ok_class: str | None,
    precision: str | None = None,
) -> Judged:
    """The bundle as a device runs it (``precision`` default: the bundle's default, the
    model its devices load) on labelled ``records``, with figures over parts."""
    from lineqc.train.evaluate import slice_keys
    from lineqc.train.intervals import parts_of
    from lineqc.train.metrics import evaluate

    precision = precision or bundle.default_precision
    decided = decide_records(bundle, precision, root, records)
    classes, ok_index = bundle.classes, bundle.classes.index(bundle.ok_class)
    labels = label_indices(records, classes, bundle.ok_class, dataset_ok_class)
    policy = bundle.policy_for(precision)
    metrics = evaluate(
        decided.logits,
        labels,
        classes,
        ok_index,
        policy.temperature,
        slice_keys(records),
        parts_of(records),
    )
    metrics |= {"bundle": bundle.version, "precision": precision}
    return Judged(metrics, records, labels, decided.logits, decided.verdicts, ok_index)
