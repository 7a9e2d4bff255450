"""Part-grouped cross-validation: fold views that never split a part, and pooled figures."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from lineqc.datasets import manifest as mf
from lineqc.datasets.split import leakage_groups
from lineqc.train.crossval import FoldPredictions, fold_views, pooled


def test_each_image_is_tested_once_and_no_part_straddles(
    synth_dataset: Path, tmp_path: Path
) -> None:
    views = fold_views(synth_dataset, tmp_path / "views", k=3, seed=0)
    source = mf.load(synth_dataset)
    tested: dict[str, int] = defaultdict(int)
    for view in views:
        manifest = mf.load(view)
        assert (view / "images").resolve() == (synth_dataset / "images").resolve()
        for ids in leakage_groups(list(manifest), max_distance=4):
            assert len({manifest.records[i].split for i in ids}) == 1, ids
        for r in manifest.in_split("test"):
            tested[r.id] += 1
        splits = {s: len(manifest.in_split(s)) for s in mf.SPLITS}
        assert splits["val"] > 0 and splits["train"] > splits["test"] > 0
    assert set(tested) == {r.id for r in source if r.label is not None}
    assert set(tested.values()) == {1}


def test_pooled_figures_carry_intervals_and_the_policy(synth_dataset: Path) -> None:
    records = [r for r in mf.load(synth_dataset) if r.label is not None]
    classes = sorted({str(r.label) for r in records})
    ok = classes.index("ok")
    labels = np.array([classes.index(str(r.label)) for r in records])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), size=len(records))
    probs[np.arange(len(records)), labels] += 2.0  # a good model
    probs /= probs.sum(axis=1, keepdims=True)
    verdicts = ["ok" if p.argmax() == ok else "defect" for p in probs]
    verdicts[:10] = ["uncertain"] * 10
    half = len(records) // 2
    folds = [
        FoldPredictions(records[:half], labels[:half], probs[:half], verdicts[:half]),
        FoldPredictions(records[half:], labels[half:], probs[half:], verdicts[half:]),
    ]
    got = pooled(folds, classes, ok)
    assert got["auroc_defect_vs_ok"] == 1.0
    lo, hi = got["intervals"]["macro_f1"]
    assert lo <= got["macro_f1"] <= hi
    assert got["support"]["images"] == len(records)
    assert got["support"]["parts"] < len(records)  # re-shot parts count once
    assert got["policy"]["uncertain_share"] == 10 / len(records)
    assert got["policy"]["ok_false_reject_rate"] == 0.0
    assert set(got["per_session"]) == {r.session for r in records}
    assert all(c["intervals"]["recall"] is not None for c in got["per_class"].values())
