"""PyTorch -> FP32 ONNX (dynamic batch), checked by the ONNX checker and against PyTorch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from lineqc.edge.decision import softmax
from lineqc.edge.preprocess import PreprocessSpec

from . import runtime
from .errors import ExportError

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(
    model: torch.nn.Module, spec: PreprocessSpec, path: Path, opset: int = OPSET
) -> Path:
    """Write the model as ONNX with input ``input`` (N, C, H, W) and output ``logits``."""
    if opset < OPSET:
        raise ExportError(f"opset {opset} is too old: Q/DQ per-channel export needs >= {OPSET}")
    model = model.eval()
    example = torch.zeros(1, spec.channels, spec.height, spec.width)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export (which needs
        # onnxscript); it is still the one that exports every timm CNN without extra packages.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[runtime.INPUT_NAME],
            output_names=[runtime.OUTPUT_NAME],
            dynamic_axes={runtime.INPUT_NAME: batch, runtime.OUTPUT_NAME: batch},
            do_constant_folding=True,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: the ONNX checker rejects the exported model ({exc})") from None
    return path


@dataclass
class Parity:
    n_images: int
    max_abs_prob_diff: float
    max_abs_logit_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_prob_diff <= self.tolerance


@torch.no_grad()
def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    temperature: float,
    tolerance: float = PARITY_TOLERANCE,
    threads: int = 2,
) -> Parity:
    """Compare calibrated probabilities of PyTorch and ONNX Runtime on the same inputs."""
    if len(inputs) == 0:
        raise ExportError("no images to check ONNX parity on")
    ref = model.eval()(torch.from_numpy(inputs)).float().numpy()
    got = runtime.logits(runtime.session(onnx_path, threads), inputs, desc="onnx parity")
    prob_diff = np.abs(softmax(ref, temperature) - softmax(got, temperature)).max()
    parity = Parity(len(inputs), float(prob_diff), float(np.abs(ref - got).max()), tolerance)
    if not parity.passed:
        raise ExportError(
            f"{onnx_path}: ONNX Runtime and PyTorch disagree on {len(inputs)} validation images "
            f"(max |probability difference| {parity.max_abs_prob_diff:.2e} > {tolerance:.0e})"
        )
    return parity
