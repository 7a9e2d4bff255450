"""The TensorRT backend (TensorRT 10+, name-based tensor API) with pycuda buffers and a stream.

Imported only where ``tensorrt`` and ``pycuda`` exist (``backends.open_backend``). Which engine
runs, and how a missing one is built, is ``tensorrt_engine``'s (the same definition
``lineqc export build-engine`` uses): the bundle's own engine when it is of exactly the
requested precision, TensorRT version and GPU; otherwise one built here from the bundle's
TensorRT source ONNX (``Bundle.tensorrt_model_path``) and cached in ``engine_cache``. An
engine of another precision, TensorRT version or GPU is never deserialized.

Not exercised by this repository's CI (no GPU there): the conformance test runs it on a
device with TensorRT and skips elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BackendError
from .bundle import Bundle
from .tensorrt_engine import EngineError, build_engine, choose_engine, compute_capability

try:  # present on Jetson / CUDA machines only; this module still imports elsewhere
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
    import pycuda.driver as cuda
    import tensorrt as trt
except ImportError as exc:  # pragma: no cover - depends on the machine
    trt = cuda = None
    _MISSING: str | None = str(exc)
else:
    _MISSING = None

log = logging.getLogger("lineqc.edge.tensorrt")
_LOGGERS: list[Any] = []


def _logger() -> Any:
    if not _LOGGERS:
        _LOGGERS.append(trt.Logger(trt.Logger.WARNING))
    return _LOGGERS[0]


def _require() -> None:
    if _MISSING is not None:
        raise BackendError(f"backend tensorrt: not available here ({_MISSING})")


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_path: Path) -> None:
        _require()
        runtime = trt.Runtime(_logger())
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise BackendError(f"{engine_path}: not an engine for this TensorRT and GPU")
        self.model_path = Path(engine_path)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or "logits" not in outputs:
            raise BackendError(
                f"{engine_path}: expected one input and a 'logits' output, got {names}"
            )
        self.input_name = inputs[0]
        in_shape = tuple(1 if d < 0 else d for d in engine.get_tensor_shape(self.input_name))
        self.context.set_input_shape(self.input_name, in_shape)
        self.host_in = cuda.pagelocked_empty(in_shape, np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.context.set_tensor_address(self.input_name, int(self.dev_in))
        # every output by name (logits, and a defect map where the model has one)
        self.host_out: dict[str, Any] = {}
        self.dev_out: dict[str, Any] = {}
        for name in outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            self.host_out[name] = cuda.pagelocked_empty(shape, np.float32)
            self.dev_out[name] = cuda.mem_alloc(self.host_out[name].nbytes)
            self.context.set_tensor_address(name, int(self.dev_out[name]))

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, precision: str | None, engine_cache: Path | None
    ) -> TensorRTBackend:
        """The engine of exactly ``precision`` (default: the bundle's); the caller has
        checked the INT8 gate (``backends.open_backend``)."""
        _require()
        precision = precision or bundle.default_precision
        cache = Path(engine_cache or bundle.root.parent / "engines")
        try:
            path, build = choose_engine(
                bundle, precision, trt.__version__, compute_capability(), cache
            )
            if build:
                log.info("building a TensorRT %s engine (once; cached at %s)", precision, path)
                build_engine(bundle.tensorrt_model_path(precision), path, precision)
        except EngineError as exc:
            raise BackendError(f"backend tensorrt: {exc}") from None
        return cls(path)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        np.copyto(self.host_in, x)
        cuda.memcpy_htod_async(self.dev_in, self.host_in, self.stream)
        if not self.context.execute_async_v3(stream_handle=self.stream.handle):
            raise BackendError("TensorRT execution failed")
        for name, host in self.host_out.items():
            cuda.memcpy_dtoh_async(host, self.dev_out[name], self.stream)
        self.stream.synchronize()
        return {name: np.array(host, dtype=np.float32) for name, host in self.host_out.items()}

    def close(self) -> None:
        for buf in (self.dev_in, *self.dev_out.values()):
            buf.free()
        del self.context
        del self.engine

    def __repr__(self) -> str:
        return f"TensorRTBackend({self.model_path})"


def describe() -> dict[str, Any]:
    return {"tensorrt": trt.__version__, "compute_capability": compute_capability()}
