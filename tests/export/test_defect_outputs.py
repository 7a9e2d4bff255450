"""A DefectNet's bundle: the defect map and the anomaly score are ONNX outputs beside the
logits, checked against PyTorch (FP32) and by the INT8 gate, and the policy uses the score."""

from __future__ import annotations

import numpy as np
import onnx

from lineqc.datasets.manifest import load
from lineqc.edge.bundle import load_bundle
from lineqc.edge.outputs import ORDER
from lineqc.export import data, runtime
from lineqc.train import checkpoint
from lineqc.train.model import ExportHeads


def test_defect_map_and_anomaly_travel_in_the_bundle(defect_bundle, defect_run) -> None:
    dataset, run = defect_run
    bundle = load_bundle(defect_bundle.bundle, defect_bundle.pubkey)
    doc = bundle.manifest.to_json()  # the report sections are for people: plain JSON
    assert bundle.has_defect_map and bundle.manifest.defect_map
    assert bundle.manifest.defect_map.stride == 8
    for precision in ("fp32", "int8"):
        graph = onnx.load(str(bundle.model_path(precision))).graph
        assert [o.name for o in graph.output] == list(ORDER)
    parity = doc["evaluation"]["parity"]
    assert parity["max_abs_defect_map_diff"] <= parity["tolerance"]  # PyTorch vs ONNX FP32
    gate = doc["evaluation"]["gate"]
    assert gate["defect_map"]["mae"] <= gate["limits"]["max_map_mae"]
    assert gate["anomaly"]["auroc_fp32"] is not None and gate["anomaly"]["auroc_int8"] is not None
    assert bundle.manifest.decision.anomaly_threshold is not None
    assert doc["evaluation"]["decision_on_val"]["review_share_anomaly_val"] <= 0.1

    # the INT8 file's map and score follow the FP32 model's on the test images
    model, meta = checkpoint.load_model(run)
    manifest = load(dataset)
    test = data.split_inputs(dataset, manifest, "test", meta, bundle.spec)
    fp32 = runtime.outputs(runtime.session(bundle.model_path("fp32")), test.inputs)
    int8 = runtime.outputs(runtime.session(bundle.model_path("int8")), test.inputs)
    import torch

    with torch.no_grad():
        ref = ExportHeads(model.eval())(torch.from_numpy(test.inputs))
    np.testing.assert_allclose(fp32["defect_map"], ref[1].numpy(), atol=1e-4)
    np.testing.assert_allclose(fp32["anomaly"], ref[2].numpy(), rtol=1e-4, atol=1e-4)
    assert np.abs(int8["defect_map"] - fp32["defect_map"]).mean() < 0.02
    assert np.corrcoef(int8["anomaly"], fp32["anomaly"])[0, 1] > 0.95
