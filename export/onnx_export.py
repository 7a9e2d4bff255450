"""PyTorch -> FP32 ONNX (dynamic batch), checked by the ONNX checker and against PyTorch."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same_arg

from lineqc.edge.decision import softmax
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.train.model import DefectNet, ExportHeads, class_logits

from . import runtime
from .errors import ExportError

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(
    model: torch.nn.Module, spec: PreprocessSpec, path: Path, opset: int = OPSET
) -> Path:
    """Write the model as ONNX with input ``input`` (N, C, H, W) and output ``logits``, and
    for a DefectNet a second output ``defect_map`` (N, 1, H/8, W/8, defect probability)."""
    if opset < OPSET:
        raise ExportError(f"opset {opset} is too old: Q/DQ per-channel export needs >= {OPSET}")
    outputs = output_names(model)
    model = ExportHeads(model).eval()
    example = torch.zeros(1, spec.channels, spec.height, spec.width)
    static_same_padding(model, example)
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
            output_names=outputs,
            dynamic_axes={name: batch for name in [runtime.INPUT_NAME, *outputs]},
            do_constant_folding=True,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: the ONNX checker rejects the exported model ({exc})") from None
    return path


def static_same_padding(model: torch.nn.Module, example: torch.Tensor) -> None:
    """Fix the TensorFlow-style 'same' padding of timm's ``Conv2dSame`` layers (the tf_*
    models) for the bundle's input size, in place.

    ``Conv2dSame`` pads from the input size at run time, which exports as shape arithmetic
    in float; INT8 quantization put that arithmetic on an 8-bit grid and a 32x32 defect map
    came out 31x31. A bundle's input size is fixed, so its padding is a constant.
    """
    sizes: dict[torch.nn.Module, list[int]] = {}
    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]

    def record(conv: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sizes.setdefault(conv, list(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in convs]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    for conv in convs:
        pads = pad_same_arg(
            sizes[conv], list(conv.weight.shape[-2:]), list(conv.stride), list(conv.dilation)
        )
        conv.forward = functools.partial(_padded_conv, conv, [int(p) for p in pads])  # type: ignore[method-assign]


def _padded_conv(conv: torch.nn.Conv2d, pads: list[int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(
        F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups
    )


def output_names(model: torch.nn.Module) -> list[str]:
    """The ONNX outputs of a model: ``logits``; for a DefectNet ``defect_map``, and
    ``anomaly`` once its memory is filled."""
    if not isinstance(model, DefectNet):
        return [runtime.OUTPUT_NAME]
    names = [runtime.OUTPUT_NAME, runtime.DEFECT_MAP]
    return [*names, runtime.ANOMALY] if model.memory.ready else names


@dataclass
class Parity:
    n_images: int
    max_abs_prob_diff: float
    max_abs_logit_diff: float
    tolerance: float
    max_abs_defect_map_diff: float | None = None  # a DefectNet's map, in probability

    @property
    def passed(self) -> bool:
        worst = max(self.max_abs_prob_diff, self.max_abs_defect_map_diff or 0.0)
        return worst <= self.tolerance


@torch.no_grad()
def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    temperature: float,
    tolerance: float = PARITY_TOLERANCE,
    threads: int = 2,
) -> Parity:
    """Compare calibrated probabilities (and a defect map's) of PyTorch and ONNX Runtime."""
    if len(inputs) == 0:
        raise ExportError("no images to check ONNX parity on")
    out = ExportHeads(model.eval())(torch.from_numpy(inputs))  # what the ONNX file computes
    ref = class_logits(out).float().numpy()
    got = runtime.outputs(runtime.session(onnx_path, threads), inputs, desc="onnx parity")
    prob_diff = np.abs(softmax(ref, temperature) - softmax(got["logits"], temperature)).max()
    parity = Parity(
        len(inputs), float(prob_diff), float(np.abs(ref - got["logits"]).max()), tolerance
    )
    if isinstance(out, tuple):
        ref_map = out[1].float().numpy()
        parity.max_abs_defect_map_diff = float(np.abs(ref_map - got[runtime.DEFECT_MAP]).max())
    if not parity.passed:
        raise ExportError(
            f"{onnx_path}: ONNX Runtime and PyTorch disagree on {len(inputs)} validation images "
            f"(max |probability difference| {parity.max_abs_prob_diff:.2e}, defect map "
            f"{parity.max_abs_defect_map_diff or 0.0:.2e}; tolerance {tolerance:.0e})"
        )
    return parity
