"""Part-grouped k-fold cross-validation: fold datasets, and figures pooled over the folds.

Each fold's test set is a k-th of the parts (``datasets.split.part_folds``); the rest is
split again into train and val, whole parts at a time. A fold is a *view* of the dataset: a
folder with its own manifest whose image and mask folders link to the dataset's, so nothing
is copied. Pooling every fold's test predictions gives one figure over all parts, each
judged by a model that never saw it; its interval resamples parts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineqc.datasets import manifest as mf
from lineqc.datasets.split import assign, part_folds

from .intervals import parts_of
from .metrics import core, roc_auc, with_intervals

VAL_SHARE = 0.15  # of the whole dataset, taken from the k-1 training folds
LEFT_OUT = "left_out_label"  # extra key: a row of the class left out, in this view's test fold


def fold_views(
    dataset: Path,
    work: Path,
    k: int,
    seed: int = 0,
    val: float = VAL_SHARE,
    leave_out: str | None = None,
) -> list[Path]:
    """k dataset views under ``work``: view f tests fold f, trains and validates on the rest.

    ``k == 1`` gives one view with the default part-grouped split (a quick look).
    ``leave_out``: a class no model may know (a defect kind nobody labelled): its rows are
    unlabelled in every view, and those of the view's test fold carry their label in
    ``extra[LEFT_OUT]``, to see whether the models flag what they never learnt.
    """
    source = mf.load(dataset)
    if not source.records:
        raise mf.DatasetError(f"{dataset}: no manifest.json or no images")
    folds = part_folds(source, k, seed) if k > 1 else {}
    views = []
    for f in range(k):
        view = work / f"fold{f}"
        view.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "masks"):
            link = view / sub
            if not link.exists() and (Path(dataset) / sub).exists():
                os.symlink((Path(dataset) / sub).resolve(), link)
        manifest = mf.load(dataset)
        for r in manifest:
            r.split = "test" if folds.get(r.id) == f and k > 1 else None
        if k > 1:  # test frozen above; train and val from the other folds, parts whole
            assign(manifest, val=val, test=0.0, seed=seed)
        else:
            assign(manifest, seed=seed)
        if leave_out is not None:
            for r in manifest:
                if r.label == leave_out:
                    if r.split == "test":
                        r.extra[LEFT_OUT] = r.label
                    r.label, r.split = None, None
        mf.save(view, manifest)
        views.append(view)
    return views


@dataclass
class FoldPredictions:
    """One fold's test images and what a model made of them."""

    records: list[mf.Record]
    labels: np.ndarray  # class index; -1: a class the model does not know
    probs: np.ndarray  # calibrated, N x classes
    verdicts: list[str]  # the bundle policy's ok / defect / uncertain


def pooled(
    folds: Sequence[FoldPredictions], classes: Sequence[str], ok_index: int, seed: int = 0
) -> dict[str, Any]:
    """Figures over every fold's test predictions, with part-level bootstrap intervals.

    Headline (defect-vs-OK AUROC, recall at 95% precision, macro-F1, ...), per class (recall,
    AUROC), per session (AUROC and the rest), and what the bundle policy did: the uncertain
    share, the OK false-reject rate, and the share of defects passed as OK.
    """
    records = [r for f in folds for r in f.records]
    labels = np.concatenate([f.labels for f in folds])
    probs = np.concatenate([f.probs for f in folds])
    verdicts = np.array([v for f in folds for v in f.verdicts])
    sessions = np.array([str(r.session) for r in records])
    boot = with_intervals(
        probs, labels, classes, ok_index, parts_of(records), {"session": sessions}, seed=seed
    )
    figures = core(probs, labels, len(classes), ok_index)
    figures["confusion_matrix"] = figures["confusion_matrix"].tolist()
    known = labels >= 0
    preds = probs.argmax(axis=1)
    per_class = {}
    for i, name in enumerate(classes):
        positive = labels[known] == i
        per_class[name] = {
            "support": int(positive.sum()),
            "recall": float((preds[known][positive] == i).mean()) if positive.any() else None,
            "auroc": roc_auc(positive, probs[known, i]),
            "intervals": boot["classes"][name],
        }
    defect = labels != ok_index
    score = 1.0 - probs[:, ok_index]
    per_session = {}
    for value, s in boot["slices"]["session"].items():
        inside = sessions == value
        per_session[value] = {
            "auroc_defect_vs_ok": roc_auc(defect[inside], score[inside]),
            "intervals": s["intervals"],
            "support": s["support"],
        }
    policy = {
        "uncertain_share": float((verdicts == "uncertain").mean()),
        "ok_false_reject_rate": float((verdicts[~defect] == "defect").mean())
        if (~defect).any()
        else None,
        "defect_passed_as_ok_rate": float((verdicts[defect] == "ok").mean())
        if defect.any()
        else None,
        "decided_accuracy": _decided_accuracy(verdicts, preds, labels, ok_index),
    }
    return {
        **figures,
        "intervals": boot["intervals"],
        "support": boot["support"],
        "bootstrap": boot["bootstrap"],
        "per_class": per_class,
        "per_session": per_session,
        "policy": policy,
    }


def _decided_accuracy(
    verdicts: np.ndarray, preds: np.ndarray, labels: np.ndarray, ok_index: int
) -> float | None:
    """Of the frames the policy decided (not uncertain), the share decided rightly: OK for
    OK frames, a defect for defect frames (whichever defect class)."""
    decided = verdicts != "uncertain"
    if not decided.any():
        return None
    right = np.where(labels == ok_index, verdicts == "ok", verdicts == "defect")
    return float(right[decided].mean())
