"""ONNX Runtime on this machine: sessions with a fixed thread count, batched logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from lineqc.edge.backends import UNFAITHFUL_ORT_OPTIMIZERS
from lineqc.edge.outputs import ANOMALY, DEFECT_MAP
from lineqc.edge.outputs import LOGITS as OUTPUT_NAME

INPUT_NAME = "input"
__all__ = ["ANOMALY", "DEFECT_MAP", "INPUT_NAME", "OUTPUT_NAME", "logits", "outputs", "session"]


def session(path: Path, threads: int = 2, optimize: bool = True) -> ort.InferenceSession:
    """``optimize=False``: no graph optimizations, so Q/DQ nodes run one by one exactly as
    the ONNX spec defines them (no fused integer kernels with their own rounding)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=UNFAITHFUL_ORT_OPTIMIZERS,
    )


def outputs(
    sess: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 32, desc: str = "infer"
) -> dict[str, np.ndarray]:
    """Every output (float32, by name) of preprocessed inputs, batch by batch."""
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, leave=False):
        got = sess.run(names, {name: inputs[start : start + batch_size]})
        for n, value in zip(names, got, strict=True):
            parts[n].append(value)
    return {
        n: np.concatenate(v).astype(np.float32) if v else np.zeros((0, 0), np.float32)
        for n, v in parts.items()
    }


def logits(
    sess: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 32, desc: str = "infer"
) -> np.ndarray:
    """Logits (float32, N x classes) of preprocessed inputs, batch by batch."""
    return outputs(sess, inputs, batch_size, desc)[OUTPUT_NAME]
