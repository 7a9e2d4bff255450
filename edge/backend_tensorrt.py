"""The TensorRT backend (TensorRT 10+, name-based tensor API) with pycuda buffers and a stream.

Imported only where ``tensorrt`` and ``pycuda`` exist (``backends.open_backend``). The engine
is the bundle's own one when it was built for exactly this TensorRT version and GPU compute
capability; otherwise one is built here from the bundle's TensorRT source ONNX
(``Bundle.tensorrt_model_path``: INT8 from its signed symmetric Q/DQ nodes, FP16 allowed)
and cached in ``engine_cache`` under the same naming. An engine built for another TensorRT
version or GPU is never deserialized.

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


def compute_capability() -> str:
    major, minor = cuda.Device(0).compute_capability()
    return f"{major}.{minor}"


def engine_name(precision: str) -> str:
    return (
        f"model.{precision}.trt{trt.__version__}.sm{compute_capability().replace('.', '')}.engine"
    )


def build_engine(onnx_path: Path, out: Path, workspace_mb: int = 1024) -> Path:
    builder = trt.Builder(_logger())
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, _logger())
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.INT8)  # honours the explicit Q/DQ scales; no calibrator
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if any(d < 0 for d in shape):
        profile = builder.create_optimization_profile()
        fixed = tuple(1 if d < 0 else d for d in shape)
        profile.set_shape(inp.name, fixed, fixed, fixed)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT engine build failed")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    return out


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
        _require()
        precision = precision or bundle.default_precision
        shipped = bundle.engine_for(trt.__version__, compute_capability())
        if shipped is not None:
            return cls(shipped)
        cache = Path(engine_cache or bundle.root.parent / "engines")
        target = cache / f"{bundle.version}" / engine_name(precision)
        if not target.is_file():
            log.info("building a TensorRT engine for %s (once; cached at %s)", precision, target)
            build_engine(bundle.tensorrt_model_path(precision), target)
        return cls(target)

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
