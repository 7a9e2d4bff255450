"""A model learns: trained briefly on synthetic parts with planted defects, it separates
defects from OK parts it never saw, its defect map points at the defects, and its anomaly
score, learnt from OK parts only, ranks defects above OK parts. Behaviour, not timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lineqc.datasets.manifest import load
from lineqc.datasets.storage import read_mask
from lineqc.train import checkpoint
from lineqc.train.data import FrameStore, eval_inputs, map_target


def test_the_recipe_learns_defects_on_unseen_parts(defect_run: tuple[Path, Path]) -> None:
    _, run = defect_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["support"]["defect_images"] >= 15
    assert metrics["auroc_defect_vs_ok"] >= 0.9
    assert metrics["intervals"]["auroc_defect_vs_ok"][0] >= 0.8
    assert metrics["anomaly"]["auroc_defect_vs_ok"] >= 0.8  # from OK frames only


def test_the_defect_map_points_at_the_defect(defect_run: tuple[Path, Path]) -> None:
    dataset, run = defect_run
    model, meta = checkpoint.load_model(run)
    spec = checkpoint.spec_of(meta)
    records = [r for r in load(dataset).in_split("test") if r.label != "ok" and r.mask_path]
    x = eval_inputs(FrameStore(dataset, records, cache=True), spec)
    with torch.no_grad():
        _, maps = model(x)
    hits = 0
    for record, m in zip(records, maps[:, 0].numpy(), strict=True):
        mask = read_mask(dataset, record)
        assert mask is not None
        target = map_target(mask, mask.shape, spec, 8)[0]
        hits += bool(target[np.unravel_index(m.argmax(), m.shape)])
    assert hits >= 0.7 * len(records), f"{hits} of {len(records)} maps peak on the defect"
