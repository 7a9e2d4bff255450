"""Labelled rows of a split and their class indices for a model: shared by training,
evaluation and export, so it needs no torch (``pip install '.[export]'`` runs without the
training extras)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .manifest import DatasetError, Manifest, Record

UNKNOWN_LABEL = -1  # a label the model does not know: a defect it never saw


def split_records(manifest: Manifest, split: str, root: Path) -> list[Record]:
    """Labelled rows of a split ("all": every labelled row); an error names an empty split."""
    rows = [r for r in manifest if r.label is not None and (split == "all" or r.split == split)]
    if not rows:
        have = sorted({r.split or "(none)" for r in manifest if r.label is not None})
        hint = f"; it has labelled images in: {', '.join(have)}" if have else ""
        raise DatasetError(
            f"{root}: no labelled images in split '{split}'{hint}"
            + ("" if have else " (is it a dataset? run `lineqc data split` first?)")
        )
    return rows


def label_indices(
    records: Sequence[Record], classes: Sequence[str], ok_class: str, dataset_ok: str | None
) -> np.ndarray:
    """Class index per row; the dataset's OK class maps to the model's, unknown labels to -1."""
    index = {name: i for i, name in enumerate(classes)}
    ok = index[ok_class]
    return np.array(
        [ok if r.label == dataset_ok else index.get(r.label or "", UNKNOWN_LABEL) for r in records],
        dtype=np.int64,
    )
