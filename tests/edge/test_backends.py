"""Backend conformance: every backend available here gives the bundle model's logits."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from lineqc.edge.backends import BackendError, available_backends, open_backend
from lineqc.edge.bundle import load_bundle

BACKENDS = [
    "onnxruntime",
    pytest.param(
        "tensorrt",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("tensorrt") is None
            or importlib.util.find_spec("pycuda") is None,
            reason="TensorRT backend needs the tensorrt and pycuda modules and an NVIDIA GPU",
        ),
    ),
]


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_backend_conformance(kind: str, precision: str, edge_bundle) -> None:
    bundle = load_bundle(edge_bundle.bundle, edge_bundle.pubkey)
    backend = open_backend(bundle, kind, threads=1, precision=precision)
    spec = bundle.spec
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, spec.channels, spec.height, spec.width)).astype(np.float32)
    outputs = backend.infer(x)
    out = outputs["logits"]
    assert out.shape == (1, len(bundle.classes)) and out.dtype == np.float32
    np.testing.assert_array_equal(out, backend.infer(x)["logits"])  # deterministic
    session = ort.InferenceSession(str(bundle.model_path(precision)))
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, {"input": x}), strict=True))
    assert set(outputs) == set(reference)
    tol = 1e-4 if precision == "fp32" or kind == "onnxruntime" else 0.25
    for name, value in outputs.items():
        np.testing.assert_allclose(value, reference[name], atol=tol, rtol=tol)
    backend.close()


def test_factory_refusals(edge_bundle) -> None:
    bundle = load_bundle(edge_bundle.bundle, edge_bundle.pubkey)
    assert "onnxruntime" in available_backends()
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend(bundle, "cuda-magic")
    if "tensorrt" not in available_backends():
        with pytest.raises(BackendError, match="tensorrt and pycuda modules are not installed"):
            open_backend(bundle, "tensorrt")
        assert open_backend(bundle, "auto").name == "onnxruntime"
