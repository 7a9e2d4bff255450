"""Small signed bundles for the device's bundle tests, without an export (no torch).

``tiny_bundle`` writes a real bundle: a two-class ONNX model (global average pool and a 1x2
MatMul, built with the onnx package) as both precisions, sealed with a real key.
``sign_as_is`` signs manifest bytes as they are, so a test can hand the device a manifest
that no writer would seal (``seal`` validates) and still pass the signature check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lineqc.edge.bundle import MANIFEST, SIGNATURE, seal
from lineqc.edge.decision import DecisionPolicy
from lineqc.edge.manifest import (
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
    ModelEntry,
    ModelInfo,
    OutputSpec,
)
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.edge.signing import load_private_key, sign

CLASSES = ["ok", "bad"]
SPEC = PreprocessSpec(height=32, width=32)
POLICY = DecisionPolicy(tuple(CLASSES), "ok", thresholds={"ok": 0.5, "bad": 0.5})


def tiny_onnx() -> bytes:
    """A real two-class model: logits = mean over the image x [1, -1]."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [1, 2], [1.0, -1.0])
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime a device may have
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def tiny_manifest(gate_passed: bool | None = True) -> Manifest:
    """A valid manifest for ``tiny_bundle``'s files (INT8 gate as given; None: absent)."""
    int8: dict[str, Any] = {} if gate_passed is None else {"gate_passed": gate_passed}
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model=ModelInfo(name="tiny", version="1.0"),
        classes=CLASSES,
        ok_class="ok",
        input=InputSpec(
            name="input", layout="NCHW", dtype="float32", channels=1, height=32, width=32
        ),
        output=OutputSpec(name="logits", kind="logits", classes=2),
        preprocess=SPEC,
        decision=POLICY,
        models={
            "fp32": ModelEntry(file="model.fp32.onnx", decision=POLICY),
            "int8": ModelEntry(file="model.int8.onnx", decision=POLICY, **int8),
        },
        default_precision="fp32",
        files={},
    )


def tiny_bundle(root: Path, private_key: Path, manifest: Manifest | None = None) -> Path:
    """A sealed bundle folder at ``root`` with ``manifest`` (default ``tiny_manifest()``)."""
    root.mkdir(parents=True)
    model = tiny_onnx()
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        (root / name).write_bytes(model)
    seal(root, manifest or tiny_manifest(), load_private_key(private_key))
    return root


def sign_as_is(root: Path, doc: dict[str, Any], private_key: Path) -> None:
    """Write ``doc`` as the bundle's manifest and sign it, unvalidated (an insider's edit)."""
    data = json.dumps(doc, indent=2, sort_keys=True).encode()
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_bytes(sign(data, load_private_key(private_key)))
