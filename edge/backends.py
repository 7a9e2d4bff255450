"""Inference backends behind one small interface: ONNX Runtime everywhere, TensorRT on Jetson.

A backend takes one preprocessed input (1, C, H, W) float32 and returns the model's outputs
by name (``lineqc.edge.outputs``): ``logits`` (1, classes) float32 always, ``defect_map`` and
``anomaly`` where the model has them. ``open_backend`` picks one: ``auto`` means TensorRT
where the ``tensorrt`` module and a GPU exist, else ONNX Runtime. The TensorRT
implementation lives in ``backend_tensorrt`` and is imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

from lineqc.errors import LineqcError

from .bundle import Bundle

# ONNX Runtime graph optimizers that change what a model computes. WeightBiasQuantization
# quantizes the FP32 weights of a layer between a DequantizeLinear and a QuantizeLinear (to
# run it as an integer kernel): a layer the export kept in FP32 ran in INT8 after all
# (magnetic-tile, the depthwise layers kept in FP32: the anomaly score's correlation with
# the same graph run without optimizations fell to 0.19).
UNFAITHFUL_ORT_OPTIMIZERS = ("WeightBiasQuantization",)


class BackendError(LineqcError):
    """A backend that cannot be used here; the message says why."""


class Backend(Protocol):
    name: str
    model_path: Path

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """(1, C, H, W) float32 -> outputs by name, ``logits`` (1, classes) among them."""
        ...

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int = 2) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Worker threads that spin between frames steal the core the capture, decision and
        # publishing threads need; on a 2-core device that shows up as the p99 tail.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=UNFAITHFUL_ORT_OPTIMIZERS,
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"{model_path}: ONNX Runtime cannot load it ({exc})") from None
        self.model_path = Path(model_path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise BackendError(f"{model_path}: no 'logits' output (has {self.output_names})")
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: x})
        return {
            name: np.asarray(out, dtype=np.float32)
            for name, out in zip(self.output_names, outs, strict=True)
        }

    def close(self) -> None:
        del self.session


def tensorrt_available() -> bool:
    return (
        importlib.util.find_spec("tensorrt") is not None
        and importlib.util.find_spec("pycuda") is not None
    )


def available_backends() -> list[str]:
    names = []
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    if tensorrt_available():
        names.append("tensorrt")
    return names


def open_backend(
    bundle: Bundle,
    kind: str = "auto",
    threads: int = 2,
    precision: str | None = None,
    engine_cache: Path | None = None,
    allow_failed_gate: bool = False,
) -> Backend:
    """The backend for a verified bundle's model of ``precision`` (default: the bundle's).

    An INT8 model whose accuracy gate failed (or was skipped) at export is refused unless
    ``allow_failed_gate``: the gate is what stands between a quantization error and the line.
    """
    if kind not in ("auto", "tensorrt", "onnxruntime"):
        raise BackendError(f"unknown backend {kind!r} (auto, tensorrt, onnxruntime)")
    failure = bundle.gate_failure(precision)
    if failure and not allow_failed_gate:
        raise BackendError(
            f"{failure}; run its fp32 model (model.precision: fp32), or set "
            "model.allow_failed_gate to diagnose it"
        )
    if kind == "tensorrt" or (kind == "auto" and tensorrt_available()):
        if not tensorrt_available():
            raise BackendError(
                "backend tensorrt: the tensorrt and pycuda modules are not installed"
            )
        from .backend_tensorrt import TensorRTBackend

        return TensorRTBackend.from_bundle(bundle, precision, engine_cache)
    return OnnxRuntimeBackend(bundle.model_path(precision), threads)
