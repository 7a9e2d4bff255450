"""TensorRT engines, defined once: their names, what each precision compiles and with which
builder flags, and which engine a device runs. ``lineqc export build-engine`` and the device's
TensorRT backend both use this module.

TensorRT 10+ only (explicit batch, name-based tensors). ``tensorrt`` is imported when an
engine is built, never at import time, so naming and selection work (and are tested)
anywhere. An engine only runs on the TensorRT version and GPU it was built for, so both go
into its file name and its manifest record.
"""

from __future__ import annotations

import ctypes
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lineqc.errors import LineqcError

if TYPE_CHECKING:  # the CLI imports this module for its choices; keep that light
    from .bundle import Bundle
    from .manifest import EngineEntry

# Builder flags per precision. The INT8 ONNX carries the Q/DQ nodes the export calibrated
# (explicit quantization): the INT8 flag lets TensorRT honour them, with no calibrator. Nothing
# else is enabled, so the layers the export kept in FP32 run in FP32, as the accuracy gate and
# the thresholds measured them, and an FP32 request never gets FP16 kernels.
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "int8": ("INT8",)}
PRECISIONS = tuple(BUILDER_FLAGS)
# Bumped whenever the build changes (flags, profile): an engine recorded or cached under another
# recipe is rebuilt rather than trusted (recipe 1 allowed FP16 in every engine, FP32 included).
RECIPE = 2
MAX_BATCH = 8
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


class EngineError(LineqcError):
    """An engine that cannot be named, built or chosen here; the message says why."""


def check_precision(precision: str) -> str:
    if precision not in BUILDER_FLAGS:
        raise EngineError(f"TensorRT precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision


def engine_file_name(precision: str, tensorrt_version: str, compute_capability: str) -> str:
    """e.g. model.int8.trt10.3.0.sm87.engine: an engine only runs where all three match."""
    check_precision(precision)
    if not re.fullmatch(r"\d+(\.\d+)*", tensorrt_version):
        raise EngineError(f"TensorRT version {tensorrt_version!r} is not dotted integers")
    if not re.fullmatch(r"\d+\.\d+", compute_capability):
        raise EngineError(f"compute capability {compute_capability!r} is not MAJOR.MINOR")
    return f"model.{precision}.trt{tensorrt_version}.sm{compute_capability.replace('.', '')}.engine"


def cached_engine_path(cache: Path, bundle: Bundle, precision: str, version: str, cc: str) -> Path:
    """Where a device keeps an engine it built itself (per bundle version and recipe)."""
    return cache / f"{bundle.version}.r{RECIPE}" / engine_file_name(precision, version, cc)


def choose_engine(
    bundle: Bundle, precision: str, tensorrt_version: str, compute_capability: str, cache: Path
) -> tuple[Path, bool]:
    """(engine path, whether it must be built there first) for a device running ``precision``.

    The bundle's own engine only when it is of exactly this precision, TensorRT version, GPU
    and recipe; otherwise the device's cached one, built from the bundle's ONNX if missing.
    """
    shipped = bundle.engine_for(precision, tensorrt_version, compute_capability, RECIPE)
    if shipped is not None:
        return shipped, False
    target = cached_engine_path(cache, bundle, precision, tensorrt_version, compute_capability)
    return target, not target.is_file()


def engine_record(
    precision: str, source: Path, tensorrt_version: str, compute_capability: str, built_at: str
) -> EngineEntry:
    """The manifest's ``engines`` entry for an engine compiled from ``source``."""
    from .manifest import EngineEntry  # pydantic and the manifest only when one is built

    return EngineEntry.model_validate(
        {
            "file": engine_file_name(precision, tensorrt_version, compute_capability),
            "precision": precision,
            "onnx": source.name,  # the bundle file it was compiled from
            "tensorrt_version": tensorrt_version,
            "compute_capability": compute_capability,
            "builder_flags": list(BUILDER_FLAGS[precision]),
            "recipe": RECIPE,
            "max_batch": MAX_BATCH,
            "built_at": built_at,
        }
    )


def load_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or an EngineError saying where engines can be built."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise EngineError(
            f"TensorRT is not installed here ({exc}); build engines on the device or a machine "
            "with an NVIDIA GPU and TensorRT 10+ (pip install tensorrt)"
        ) from None


def compute_capability(device: int = 0) -> str:
    """ "MAJOR.MINOR" of a GPU, through the CUDA driver (present wherever a GPU is usable)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise EngineError(f"no NVIDIA driver (libcuda.so.1: {exc})") from None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    for status in (
        cuda.cuInit(0),
        cuda.cuDeviceGet(ctypes.byref(dev), device),
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev),
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev),
    ):
        if status != 0:
            raise EngineError(f"CUDA driver error {status} while querying GPU {device}")
    return f"{major.value}.{minor.value}"


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    timing_cache: Path | None = None,
    workspace_mb: int = 1024,
) -> Path:
    """Compile ``onnx_path`` for ``precision`` into ``engine_path`` (written atomically).

    The batch is dynamic from 1 to MAX_BATCH. ``timing_cache``, if given, is read and updated.
    """
    trt = load_tensorrt()
    flags = BUILDER_FLAGS[check_precision(precision)]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    # TF32 is on by default and rounds FP32 matmul inputs to a 10-bit mantissa; the export
    # measured these models in FP32.
    config.clear_flag(trt.BuilderFlag.TF32)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    inp = network.get_input(0)
    dims = tuple(inp.shape)
    if any(d < 0 for d in dims):
        profile = builder.create_optimization_profile()
        low = tuple(1 if d < 0 else d for d in dims)
        high = tuple(MAX_BATCH if d < 0 else d for d in dims)
        profile.set_shape(inp.name, low, low, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
