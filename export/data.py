"""The images the export works on: a dataset split, preprocessed exactly as the device does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lineqc.datasets.labels import label_indices, split_records
from lineqc.datasets.manifest import DatasetError, Manifest, Record
from lineqc.datasets.storage import read_image
from lineqc.edge import drift
from lineqc.edge.manifest import DriftReference
from lineqc.edge.preprocess import PreprocessSpec, preprocess

DRIFT_REFERENCE_IMAGES = 5000  # a spread of the split is enough for a 64-bin histogram


@dataclass
class SplitInputs:
    records: list[Record]
    inputs: np.ndarray  # float32 (N, C, H, W), through lineqc.edge.preprocess
    labels: np.ndarray  # class index per image; -1 for a label the model does not know


def load_inputs(
    root: Path, records: Sequence[Record], spec: PreprocessSpec, desc: str
) -> np.ndarray:
    out = np.empty((len(records), spec.channels, spec.height, spec.width), dtype=np.float32)
    for i, record in enumerate(tqdm(records, desc=desc, leave=False)):
        out[i] = preprocess(read_image(root, record), spec)
    return out


def split_inputs(
    root: Path, manifest: Manifest, split: str, meta: dict[str, Any], spec: PreprocessSpec
) -> SplitInputs:
    """Labelled images of one split with the model's class indices."""
    try:
        records = split_records(manifest, split, root)
    except DatasetError as exc:
        raise DatasetError(f"{exc} (the export needs a '{split}' split)") from None
    labels = label_indices(records, meta["classes"], meta["ok_class"], manifest.ok_class)
    return SplitInputs(records, load_inputs(root, records, spec, f"load {split}"), labels)


def drift_reference(root: Path, records: Sequence[Record], split: str) -> DriftReference | None:
    """The drift statistic's histogram on (an even spread of at most
    DRIFT_REFERENCE_IMAGES of) a split's images, read as the device captures them."""
    if not records:
        return None
    step = max(1, -(-len(records) // DRIFT_REFERENCE_IMAGES))
    chosen = records[::step]
    values = [
        drift.frame_brightness(read_image(root, r))
        for r in tqdm(chosen, desc="drift reference", leave=False)
    ]
    return DriftReference(
        bin_width=drift.BIN_WIDTH,
        counts=drift.histogram(values),
        frames=len(values),
        split=split,
    )
