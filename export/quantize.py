"""Explicit INT8 quantization: calibrate once, write a Q/DQ ONNX that TensorRT and ONNX
Runtime both run.

Weights are per-channel symmetric INT8, activations symmetric INT8 (zero point 0, as
TensorRT requires). The activation ranges are computed once and cached, so that quantizing
again with some layers kept in FP32 (after the sensitivity pass) costs no recalibration.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from . import runtime
from .errors import ExportError

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a sensitivity pass ranks


class _ArrayReader(CalibrationDataReader):
    """Feeds preprocessed inputs to the calibrator in batches, with a progress bar."""

    def __init__(self, inputs: np.ndarray, batch_size: int, desc: str):
        starts = range(0, len(inputs), batch_size)
        self._bar = tqdm(starts, desc=desc, leave=False)
        self._batches = iter([{runtime.INPUT_NAME: inputs[s : s + batch_size]} for s in self._bar])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass
class Calibrated:
    """A model prepared for quantization and its cached activation ranges."""

    prepared: Path  # the FP32 model after ORT's pre-processing (shapes, BN folded)
    cache: Path
    method: str
    n_images: int
    weighted_nodes: list[str] = field(default_factory=list)


def calibrate(
    fp32_path: Path, workdir: Path, inputs: np.ndarray, method: str = "minmax", batch_size: int = 16
) -> Calibrated:
    """Pre-process the FP32 model and compute activation ranges on ``inputs``."""
    if method not in METHODS:
        raise ExportError(f"calibration method {method!r} is not one of {sorted(METHODS)}")
    if len(inputs) == 0:
        raise ExportError("the calibration set is empty (no training images?)")
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    cache = workdir / f"calibration.{method}.json"
    cache.unlink(missing_ok=True)
    if method != "minmax":
        batch_size = 1  # ORT's histogram calibrators stack batches: they must all be one size
    reader = _ArrayReader(inputs, batch_size, f"calibrate ({method})")
    _quiet_quantize(prepared, workdir / "calibrated.int8.onnx", cache, method, reader=reader)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    nodes = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]
    return Calibrated(prepared, cache, method, len(inputs), nodes)


def quantize(
    cal: Calibrated,
    out_path: Path,
    keep_fp32: Iterable[str] = (),
    only: Sequence[str] | None = None,
) -> Path:
    """Write the Q/DQ model; ``keep_fp32`` nodes stay unquantized, ``only`` limits the rest."""
    _quiet_quantize(
        cal.prepared, out_path, cal.cache, cal.method, exclude=list(keep_fp32), only=only
    )
    return out_path


def _quiet_quantize(
    prepared: Path,
    out_path: Path,
    cache: Path,
    method: str,
    reader: CalibrationDataReader | None = None,
    exclude: list[str] | None = None,
    only: Sequence[str] | None = None,
) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice about pre-processing we already did
    try:
        # ORT's calibrators print progress to stdout, which belongs to `--json` output here
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=list(only) if only is not None else None,
                nodes_to_exclude=exclude or None,
                calibrate_method=METHODS[method],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                calibration_cache_path=str(cache),
            )
    finally:
        root.setLevel(level)


def qdq_counts(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a model has (0 for an FP32 model)."""
    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: ops.get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")}


def sensitivity(
    cal: Calibrated,
    inputs: np.ndarray,
    reference: np.ndarray,
    workdir: Path,
    threads: int = 2,
) -> list[tuple[str, float]]:
    """Rank weighted layers by the error that quantizing that layer alone causes.

    The error is the mean squared difference of logits from the FP32 ``reference``, relative
    to the reference's variance; most sensitive first.
    """
    scale = float(np.var(reference)) or 1.0
    scores = []
    probe = workdir / "sensitivity.onnx"
    for node in tqdm(cal.weighted_nodes, desc="sensitivity", leave=False):
        quantize(cal, probe, only=[node])
        got = runtime.logits(runtime.session(probe, threads), inputs, desc=node)
        scores.append((node, float(np.mean((got - reference) ** 2)) / scale))
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s[1])
