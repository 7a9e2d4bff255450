"""TensorRT engines: the naming contract everywhere, the build only where TensorRT exists."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from lineqc.edge.bundle import load_bundle
from lineqc.export.bundle_writer import engine_file_name
from lineqc.export.errors import ExportError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_name_carries_version_and_gpu() -> None:
    assert engine_file_name("int8", "10.3.0", "8.7") == "model.int8.trt10.3.0.sm87.engine"
    with pytest.raises(ExportError, match="compute capability"):
        engine_file_name("int8", "10.3.0", "sm87")
    with pytest.raises(ExportError, match="TensorRT version"):
        engine_file_name("int8", "10.3/../x", "8.7")


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


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed (needs an NVIDIA GPU)")
def test_build_engine_into_bundle(signed_bundle: Path, keys, val_split, tmp_path: Path) -> None:
    import numpy as np

    from lineqc.export import runtime
    from lineqc.export.tensorrt_build import build_into_bundle, compute_capability, run_engine

    bundle = Path(shutil.copytree(signed_bundle, tmp_path / "bundle"))
    record = build_into_bundle(bundle, keys[0], keys[1], timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    verified = load_bundle(bundle, keys[1])  # re-signed, engine covered by the hashes
    engine = verified.engine_for(record["tensorrt_version"], compute_capability())
    assert engine is not None and engine.name == record["file"]
    got = run_engine(engine, val_split.inputs[:4])
    ref = runtime.logits(runtime.session(verified.model_path("int8")), val_split.inputs[:4])
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 0.5
