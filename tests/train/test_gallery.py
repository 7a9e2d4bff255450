"""The report's error gallery: missed defects and false rejects as pictures, worst first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineqc.datasets.manifest import load
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.train.gallery import error_gallery


def test_gallery_shows_the_mistakes_worst_first(synth_dataset: Path) -> None:
    records = [r for r in load(synth_dataset) if r.label is not None][:12]
    classes = sorted({str(r.label) for r in load(synth_dataset) if r.label})
    ok = classes.index("ok")
    labels = np.array([classes.index(str(r.label)) for r in records])
    probs = np.full((len(records), len(classes)), 0.01)
    probs[np.arange(len(records)), labels] = 0.9  # right ...
    defects = np.flatnonzero(labels != ok)[:2]
    oks = np.flatnonzero(labels == ok)[:1]
    probs[defects] = 0.01
    probs[defects, ok] = [0.7, 0.95]  # ... but two defects called OK (the second worse)
    probs[oks] = 0.01
    probs[oks, (ok + 1) % len(classes)] = 0.8  # and one OK frame called a defect
    maps = np.zeros((len(records), 1, 4, 4), np.float32)
    maps[:, 0, 1, 2] = 0.9
    page = error_gallery(
        records, labels, probs, maps, classes, ok, synth_dataset, PreprocessSpec(32, 32, 1)
    )
    assert "2 defect frames called OK (missed), 1 OK frames called a defect" in page
    assert page.count("data:image/jpeg;base64,") == 3
    worse, milder = records[defects[1]].id, records[defects[0]].id
    if labels[defects[0]] == labels[defects[1]]:  # same class: the worst comes first
        assert page.index(worse) < page.index(milder)
    assert "False rejects, called" in page and records[oks[0]].id in page
