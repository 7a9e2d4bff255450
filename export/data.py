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
from lineqc.edge.preprocess import PreprocessSpec, preprocess


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
