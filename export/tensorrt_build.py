"""TensorRT 10+ engines from the bundle's Q/DQ ONNX (explicit quantization).

The ONNX compiled is the INT8 entry's ``tensorrt_file`` (signed symmetric activations, as
TensorRT requires), not the UINT8-activation file ONNX Runtime runs: the bundle's
``tensorrt_model_path`` picks it (``file`` for a bundle that names none).

Imported only where ``tensorrt`` exists (the device, or any NVIDIA GPU machine). The INT8
ranges come from the Q/DQ nodes the export calibrated, so TensorRT only compiles: no
calibrator here. FP16 is allowed for the layers left unquantized. An engine only runs on the
TensorRT version and GPU it was built for, so both go into its file name and the manifest.
"""

from __future__ import annotations

import ctypes
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt

from lineqc.edge.bundle import load_bundle
from lineqc.edge.signing import load_private_key, load_public_key

from .bundle_writer import add_engine, engine_file_name
from .errors import ExportError

MAX_BATCH = 8
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


def compute_capability(device: int = 0) -> str:
    """ "MAJOR.MINOR" of a GPU, through the CUDA driver (present wherever a GPU is usable)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise ExportError(f"no NVIDIA driver (libcuda.so.1: {exc})") from None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    for status in (
        cuda.cuInit(0),
        cuda.cuDeviceGet(ctypes.byref(dev), device),
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev),
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev),
    ):
        if status != 0:
            raise ExportError(f"CUDA driver error {status} while querying GPU {device}")
    return f"{major.value}.{minor.value}"


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    input_shape: tuple[int, int, int],
    timing_cache: Path,
    workspace_mb: int = 1024,
    max_batch: int = MAX_BATCH,
) -> None:
    """Compile ``onnx_path`` to ``engine_path``; the timing cache is read and updated."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.INT8)  # honours the Q/DQ nodes
    config.set_flag(trt.BuilderFlag.FP16)  # for layers the export kept unquantized
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    c, h, w = input_shape
    name = network.get_input(0).name
    profile.set_shape(name, (1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def run_engine(engine_path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits of one batch through an engine (name-based tensor API, pycuda for memory)."""
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
    import pycuda.driver as cuda

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise ExportError(f"{engine_path}: not an engine for this TensorRT version and GPU")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    context.set_input_shape(in_name, x.shape)
    out = np.empty(tuple(context.get_tensor_shape(out_name)), dtype=np.float32)
    stream = cuda.Stream()
    d_in, d_out = cuda.mem_alloc(x.nbytes), cuda.mem_alloc(out.nbytes)
    cuda.memcpy_htod_async(d_in, x, stream)
    context.set_tensor_address(in_name, int(d_in))
    context.set_tensor_address(out_name, int(d_out))
    if not context.execute_async_v3(stream.handle):
        raise ExportError(f"{engine_path}: execution failed")
    cuda.memcpy_dtoh_async(out, d_out, stream)
    stream.synchronize()
    return out


def build_into_bundle(
    bundle: Path,
    key_path: Path,
    pubkey_path: Path,
    workspace_mb: int = 1024,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Build the INT8 engine of a verified bundle folder, add it and re-sign the manifest."""
    if not bundle.is_dir():
        raise ExportError(f"{bundle}: build-engine needs a bundle folder (unpack a tar first)")
    key, pubkey = load_private_key(key_path), load_public_key(pubkey_path)
    verified = load_bundle(bundle, pubkey)
    spec = verified.spec
    version, cc = trt.__version__, compute_capability()
    source = verified.tensorrt_model_path("int8")
    record = {
        "file": engine_file_name("int8", version, cc),
        "precision": "int8",
        "onnx": source.name,  # the bundle file it was compiled from
        "tensorrt_version": version,
        "compute_capability": cc,
        "max_batch": MAX_BATCH,
        "fp16_fallback": True,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cache = timing_cache or bundle.parent / f"timing.trt{version}.sm{cc.replace('.', '')}.cache"
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        engine = Path(tmp) / record["file"]
        build_engine(
            source,
            engine,
            (spec.channels, spec.height, spec.width),
            cache,
            workspace_mb,
        )
        add_engine(bundle, engine, record, key, pubkey)
    return record
