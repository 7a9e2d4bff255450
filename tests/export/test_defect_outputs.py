"""A DefectNet's bundle: the defect map and the anomaly score are ONNX outputs beside the
logits, checked against PyTorch (FP32) and by the INT8 gate, and the policy uses the score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from lineqc.datasets.manifest import load
from lineqc.edge.bundle import load_bundle
from lineqc.edge.outputs import ANOMALY, DEFECT_MAP, LOGITS, ORDER
from lineqc.export import data, onnx_export, quantize, runtime
from lineqc.train import checkpoint
from lineqc.train.model import ExportHeads

from .conftest import FAST


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


def test_sensitivity_weighs_every_output_the_gate_checks(defect_run, tmp_path: Path) -> None:
    """The gate checks the logits, the defect map and the anomaly score, so the ranking of
    layers to keep in FP32 does too: layers past the anomaly score's stride-16 tap count
    only through the other outputs, and the score ranks the layers otherwise than the
    logits do."""
    dataset, run = defect_run
    model, meta = checkpoint.load_model(run)
    spec = checkpoint.spec_of(meta)
    fp32 = onnx_export.export_onnx(model, spec, tmp_path / "fp32.onnx")
    inputs = data.split_inputs(dataset, load(dataset), "val", meta, spec).inputs[:16]
    cal = quantize.calibrate(fp32, tmp_path / "q", inputs)
    reference = runtime.outputs(runtime.session(fp32), inputs)

    def ranking(names: tuple[str, ...]) -> list[tuple[str, float]]:
        return quantize.sensitivity(cal, inputs, {n: reference[n] for n in names}, tmp_path)

    every, logits = dict(ranking(ORDER)), dict(ranking((LOGITS,)))
    anomaly, defect_map = dict(ranking((ANOMALY,))), dict(ranking((DEFECT_MAP,)))
    for node, score in every.items():
        assert score == pytest.approx(logits[node] + defect_map[node] + anomaly[node])
    # past the tap a layer moves the logits, not the score: the logits alone would rank
    # the layers for a model other than the one the gate judges
    layer4 = [n for n in cal.weighted_nodes if "/layer4/" in n]
    assert any(anomaly[n] == 0 < logits[n] for n in layer4)
    assert sorted(anomaly, key=anomaly.__getitem__) != sorted(logits, key=logits.__getitem__)


def test_scoring_keys_are_one_onnx_pass_in_fp32_and_int8(defect_run, keys, tmp_path: Path) -> None:
    """A run finished with flip_views=2 and defect_score=map exports the averaged views, with
    p(defect) from the map, as its ONNX function: a frame and its mirror image get the same
    logits, anomaly score and (mirrored) defect map from the FP32 and the INT8 file, for a
    batch of any size, and PyTorch agrees."""
    import shutil

    import torch

    from lineqc.export.pipeline import ExportOptions, export_run
    from lineqc.train.config import load_config
    from lineqc.train.loop import train

    dataset, run = defect_run
    again = tmp_path / "run"
    shutil.copytree(run, again)
    scoring = ["flip_views=2", "defect_score=map"]
    train(load_config(run / "config.yaml", scoring), dataset, again, resume=True)
    export_run(again, dataset, tmp_path / "bundle", keys[0], ExportOptions(**FAST))
    bundle = load_bundle(tmp_path / "bundle", keys[1])
    model, meta = checkpoint.load_model(again)
    assert meta["flip_views"] == 2 and meta["defect_score"] == "map"
    test = data.split_inputs(dataset, load(dataset), "test", meta, bundle.spec)
    x = test.inputs[:5]
    with torch.no_grad():
        ref = ExportHeads(model)(torch.from_numpy(x))
    for precision in ("fp32", "int8"):
        sess = runtime.session(bundle.model_path(precision))
        got = runtime.outputs(sess, x)
        mirrored = runtime.outputs(sess, np.ascontiguousarray(x[..., ::-1]))
        one = runtime.outputs(sess, x[:1])
        for out in (mirrored, one):  # another batch, another order of views: same sums
            rows = len(out[LOGITS])
            np.testing.assert_allclose(out[LOGITS], got[LOGITS][:rows], atol=1e-4)
            np.testing.assert_allclose(out[ANOMALY], got[ANOMALY][:rows], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mirrored[DEFECT_MAP][..., ::-1], got[DEFECT_MAP], atol=1e-4)
        if precision == "fp32":
            np.testing.assert_allclose(got[LOGITS], ref[0].numpy(), atol=1e-4)
            np.testing.assert_allclose(got[DEFECT_MAP], ref[1].numpy(), atol=1e-4)
