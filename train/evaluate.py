"""Evaluate a model on a dataset split through the edge preprocessing, as the device runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lineqc.datasets.labels import label_indices, split_records
from lineqc.datasets.manifest import DatasetError, Record, load
from lineqc.edge import outputs
from lineqc.edge.preprocess import PreprocessSpec, preprocess_batch

from . import checkpoint
from .data import FrameStore
from .intervals import parts_of
from .metrics import anomaly_figures, evaluate
from .model import ExportHeads

SLICE_KINDS = ("session", "source")  # capture session / lighting, and camera or source


@torch.no_grad()
def predict_outputs(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    device: torch.device,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Every output the device would get (``lineqc.edge.outputs``), as float32 numpy."""
    model.eval()
    heads = ExportHeads(model)
    parts: dict[str, list[torch.Tensor]] = {}
    for x in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            out = heads(x)
        got = out if isinstance(out, tuple) else (out,)
        for name, value in zip(outputs.ORDER, got, strict=False):  # a model has a prefix
            parts.setdefault(name, []).append(value.float().cpu())
    if not parts:
        return {outputs.LOGITS: np.zeros((0, 0), np.float32)}
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def predict(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    device: torch.device,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Logits (float32 numpy) of batches of preprocessed inputs."""
    return predict_outputs(model, batches, device, autocast, channels_last)[outputs.LOGITS]


def tensor_batches(inputs: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size]


def frame_batches(
    frames: FrameStore, spec: PreprocessSpec, batch_size: int, desc: str = "eval"
) -> Iterator[torch.Tensor]:
    """Preprocess frames batch by batch (nothing held beyond one batch)."""
    for start in tqdm(range(0, len(frames), batch_size), desc=desc, leave=False):
        chunk = [frames[i] for i in range(start, min(start + batch_size, len(frames)))]
        yield torch.from_numpy(preprocess_batch(chunk, spec))


def slice_keys(records: list[Record]) -> dict[str, list[str | None]]:
    return {kind: [getattr(r, kind) for r in records] for kind in SLICE_KINDS}


@dataclass
class SplitResult:
    metrics: dict[str, Any]
    records: list[Record]
    labels: np.ndarray
    logits: np.ndarray
    defect_maps: np.ndarray | None = None  # N x 1 x h x w probabilities (a DefectNet)


def evaluate_run(
    run_or_checkpoint: Path,
    dataset: Path,
    split: str,
    batch_size: int = 64,
    device: str = "cpu",
    where: Callable[[Record], bool] | None = None,
) -> SplitResult:
    """Metrics of a trained model on any dataset in the manifest format.

    The dataset's OK class stands for the model's OK class; labels the model does not know
    count as defects (see ``metrics``). ``where`` keeps only the split's rows it accepts.
    """
    model, meta = checkpoint.load_model(run_or_checkpoint, device)
    manifest = load(dataset)
    if not manifest.records:
        raise DatasetError(f"{dataset}: no manifest.json or no images (not a lineqc dataset?)")
    records = split_records(manifest, split, Path(dataset))
    if where is not None:
        records = [r for r in records if where(r)]
        if not records:
            raise DatasetError(f"{dataset}: no labelled images of split '{split}' are selected")
    classes, ok_class = meta["classes"], meta["ok_class"]
    labels = label_indices(records, classes, ok_class, manifest.ok_class)
    spec = checkpoint.spec_of(meta)
    frames = FrameStore(Path(dataset), records, cache=False)
    out = predict_outputs(model, frame_batches(frames, spec, batch_size), torch.device(device))
    logits = out[outputs.LOGITS]
    temperature = float(meta.get("temperature") or 1.0)
    metrics = evaluate(
        logits,
        labels,
        classes,
        classes.index(ok_class),
        temperature,
        slice_keys(records),
        parts_of(records),
    )
    if outputs.ANOMALY in out:
        metrics["anomaly"] = anomaly_figures(
            out[outputs.ANOMALY], labels, classes, classes.index(ok_class), parts_of(records)
        )
    metrics["split"] = split
    metrics["dataset"] = str(dataset)
    return SplitResult(metrics, records, labels, logits, out.get(outputs.DEFECT_MAP))


def predictions_csv(result: SplitResult, classes: list[str], temperature: float) -> str:
    """One row per image: id, session, label, prediction and calibrated probabilities."""
    from lineqc.edge.decision import softmax

    probs = softmax(result.logits, temperature)
    head = ["id", "session", "source", "label", "predicted", *[f"p_{c}" for c in classes]]
    lines = [",".join(head)]
    for r, p in zip(result.records, probs, strict=True):
        row = [r.id, r.session or "", r.source, r.label or "", classes[int(p.argmax())]]
        lines.append(",".join(row + [f"{v:.6f}" for v in p]))
    return "\n".join(lines) + "\n"
