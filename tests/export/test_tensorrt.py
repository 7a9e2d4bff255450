"""TensorRT engines: naming, selection by precision and the INT8 gate everywhere; the build
and the engine's outputs only where TensorRT exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lineqc.edge.bundle import Bundle, load_bundle, seal
from lineqc.edge.manifest import EngineEntry, Manifest
from lineqc.edge.signing import load_private_key
from lineqc.edge.tensorrt_engine import (
    BUILDER_FLAGS,
    RECIPE,
    EngineError,
    choose_engine,
    engine_file_name,
    engine_record,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None


def test_engine_name_carries_precision_version_and_gpu() -> None:
    assert engine_file_name("int8", "10.3.0", "8.7") == "model.int8.trt10.3.0.sm87.engine"
    assert engine_file_name("fp32", "10.3.0", "8.7") == "model.fp32.trt10.3.0.sm87.engine"
    with pytest.raises(EngineError, match="compute capability"):
        engine_file_name("int8", "10.3.0", "sm87")
    with pytest.raises(EngineError, match="TensorRT version"):
        engine_file_name("int8", "10.3/../x", "8.7")
    with pytest.raises(EngineError, match="precision 'fp16'"):  # no policy is chosen for it
        engine_file_name("fp16", "10.3.0", "8.7")


def test_builder_flags_keep_the_precision_asked_for(tmp_path: Path) -> None:
    """FP32 gets no reduced-precision flag; INT8 only the one explicit Q/DQ needs (no FP16
    for the layers the export kept in FP32). The record says so, with the recipe."""
    src = tmp_path / "model.int8.tensorrt.onnx"
    fp32 = engine_record("fp32", tmp_path / "model.fp32.onnx", "10.3.0", "8.7", "now")
    int8 = engine_record("int8", src, "10.3.0", "8.7", "now")
    assert fp32.builder_flags == [] and int8.builder_flags == ["INT8"]
    assert set(BUILDER_FLAGS) == {"fp32", "int8"}
    assert int8.file == "model.int8.trt10.3.0.sm87.engine" and int8.onnx == src.name
    assert fp32.recipe == int8.recipe == RECIPE


def _with_engines(bundle: Bundle, *engines: EngineEntry) -> Bundle:
    manifest = bundle.manifest.model_copy(update={"engines": list(engines)})
    return dataclasses.replace(bundle, manifest=manifest)


def test_engine_chosen_by_precision(signed_bundle: Path, keys, tmp_path: Path) -> None:
    """A device asking for FP32 never gets the bundle's INT8 engine: it builds its own FP32
    one. An engine of an older recipe (which allowed FP16) or another GPU is rebuilt too."""
    bundle = load_bundle(signed_bundle, keys[1])
    cache = tmp_path / "engines"
    src = bundle.tensorrt_model_path("int8")
    int8 = engine_record("int8", src, "10.3.0", "8.7", "now")
    shipped = _with_engines(bundle, int8)

    path, build = choose_engine(shipped, "int8", "10.3.0", "8.7", cache)
    assert (path, build) == (signed_bundle / int8.file, False)
    path, build = choose_engine(shipped, "fp32", "10.3.0", "8.7", cache)
    assert build and path.name == "model.fp32.trt10.3.0.sm87.engine"
    assert path.parent.parent == cache  # the device's cache, never the INT8 engine
    for other in (("10.3.0", "7.2"), ("10.4.0", "8.7")):
        path, build = choose_engine(shipped, "int8", *other, cache)
        assert build and path.parent.parent == cache

    # recipe 1 (before this recipe) built every engine with FP16 allowed: not trusted
    old = int8.model_dump(exclude={"recipe", "builder_flags"}) | {"fp16_fallback": True}
    path, build = choose_engine(
        _with_engines(bundle, EngineEntry.model_validate(old)), "int8", "10.3.0", "8.7", cache
    )
    assert build and path.parent == cache / f"{bundle.version}.r{RECIPE}"

    path.parent.mkdir(parents=True)  # once built, the cached engine is used
    path.write_bytes(b"built here")
    assert choose_engine(bundle, "int8", "10.3.0", "8.7", cache) == (path, False)


@pytest.fixture
def ungated_bundle(signed_bundle: Path, keys, tmp_path: Path) -> Path:
    """A copy of the bundle, re-signed by its owner as if the INT8 gate had been skipped."""
    root = Path(shutil.copytree(signed_bundle, tmp_path / "bundle"))
    doc = json.loads((root / "manifest.json").read_text())
    doc["models"]["int8"]["gate_passed"] = False
    doc["evaluation"]["gate"] = None
    doc["default_precision"] = "fp32"
    seal(root, Manifest.from_json(doc), load_private_key(keys[0]))
    return root


def test_build_engine_refuses_an_ungated_int8_model(lineqc, ungated_bundle: Path, keys) -> None:
    args = ("export", "build-engine", str(ungated_bundle), "--key", str(keys[0]))
    args += ("--pubkey", str(keys[1]))
    before = (ungated_bundle / "manifest.json").read_bytes()
    proc = lineqc(*args, "--precision", "int8", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "did not pass the accuracy gate at export (the gate was skipped)" in proc.stderr
    assert "--allow-failed-gate" in proc.stderr and "--precision fp32" in proc.stderr
    assert (ungated_bundle / "manifest.json").read_bytes() == before
    if HAS_TENSORRT:
        return
    # forced, or the bundle's default (FP32): past the gate, on to TensorRT
    for extra in (("--precision", "int8", "--allow-failed-gate"), ()):
        proc = lineqc(*args, *extra, check=False)
        assert proc.returncode == 2 and "TensorRT is not installed" in proc.stderr, proc.stderr


def test_build_engine_without_tensorrt_says_so(lineqc, signed_bundle: Path, keys) -> None:
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here")
    proc = lineqc(
        "export",
        "build-engine",
        str(signed_bundle),
        "--key",
        str(keys[0]),
        "--pubkey",
        str(keys[1]),
        check=False,
    )
    assert proc.returncode == 2 and "TensorRT is not installed" in proc.stderr


@pytest.mark.skipif(
    not (HAS_TENSORRT and HAS_PYCUDA),
    reason="TensorRT engines need the tensorrt and pycuda modules and an NVIDIA GPU",
)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_build_engine_into_bundle(
    precision: str, signed_bundle: Path, keys, val_split, tmp_path: Path
) -> None:
    from lineqc.edge.backend_tensorrt import TensorRTBackend
    from lineqc.edge.tensorrt_engine import compute_capability
    from lineqc.export import runtime
    from lineqc.export.tensorrt_build import build_into_bundle

    bundle = Path(shutil.copytree(signed_bundle, tmp_path / "bundle"))
    record = build_into_bundle(
        bundle, keys[0], keys[1], precision, timing_cache=tmp_path / "timing.cache"
    )
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert record.precision == precision
    verified = load_bundle(bundle, keys[1])  # re-signed, engine covered by the hashes
    engine = verified.engine_for(precision, record.tensorrt_version, compute_capability(), RECIPE)
    assert engine is not None and engine.name == record.file
    backend = TensorRTBackend(engine)
    x = val_split.inputs[:4]
    got = np.concatenate([backend.infer(x[i : i + 1])["logits"] for i in range(len(x))])
    backend.close()
    ref = runtime.logits(runtime.session(verified.model_path(precision)), x)
    tol = 1e-3 if precision == "fp32" else 0.5  # FP32 stays FP32 (no FP16, no TF32)
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < tol
