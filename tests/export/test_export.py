"""The export pipeline on a real (tiny) run: ONNX parity, Q/DQ, the gate, latency, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from lineqc.edge.backends import BackendError, open_backend
from lineqc.edge.bundle import load_bundle
from lineqc.edge.manifest import Manifest
from lineqc.edge.preprocess import PreprocessSpec, preprocess_batch
from lineqc.export import onnx_export, quantize, runtime
from lineqc.export.errors import ExportError, GateFailed
from lineqc.export.pipeline import ExportOptions, export_run
from lineqc.train.model import build_model

from .conftest import FAST


def test_bundle_models_qdq_and_dynamic_batch(
    signed_bundle: Path, keys: tuple[Path, Path], val_split
) -> None:
    bundle = load_bundle(signed_bundle, keys[1])
    fp32, int8 = bundle.model_path("fp32"), bundle.model_path("int8")
    assert quantize.qdq_counts(fp32) == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    counts = quantize.qdq_counts(int8)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    model = onnx.load(str(int8))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # per-channel weights: some DequantizeLinear has a vector of scales
    inits = {t.name: t for t in model.graph.initializer}
    scales = [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits
    ]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)
    for path in (fp32, int8):  # dynamic batch: 1 and 5 frames through the same file
        sess = runtime.session(path)
        assert runtime.logits(sess, val_split.inputs[:5], batch_size=5).shape == (5, 4)
        assert runtime.logits(sess, val_split.inputs[:1]).shape == (1, 4)


def test_manifest_records_gate_latency_thresholds(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    manifest = load_bundle(signed_bundle, keys[1]).manifest
    doc = manifest.to_json()  # the report sections are for people: plain JSON
    gate = doc["evaluation"]["gate"]
    assert gate["passed"] and gate["agreement"] >= 0.99
    assert doc["evaluation"]["parity"]["max_abs_prob_diff"] <= 1e-4
    lat = manifest.latency_ms
    assert set(lat) == {"fp32", "int8"} and all(v.p99 >= v.p50 > 0 for v in lat.values())
    fastest = min(lat, key=lambda p: lat[p].p50)  # both passed: the faster is the default
    assert manifest.default_precision == fastest
    assert manifest.models["int8"].gate_passed is True
    decision = manifest.decision
    assert decision.temperature == 1.5 and set(decision.thresholds) == set(manifest.classes)
    assert doc["evaluation"]["decision_on_val"]["review_share_band_val"] <= 0.05
    assert doc["models"]["int8"]["calibration"]["images"] == 64
    assert manifest.dataset is not None
    assert manifest.dataset.manifest_hash == manifest.dataset.training_manifest_hash


def test_policy_chosen_per_precision(
    signed_bundle: Path, keys: tuple[Path, Path], val_split
) -> None:
    """Each precision's thresholds are chosen on that model's own outputs, and the device
    applies the ones of the model it runs; a bundle from before reads its one policy."""
    from lineqc.edge.config import DecisionOverrides
    from lineqc.edge.runtime import config_policy
    from lineqc.export.thresholds import choose_policy

    bundle = load_bundle(signed_bundle, keys[1])
    manifest = bundle.manifest
    assert manifest.decision == manifest.models[manifest.default_precision].decision
    assert manifest.evaluation is not None
    by_precision = manifest.evaluation.decision_on_val_by_precision or {}
    assert by_precision[manifest.default_precision] == manifest.evaluation.decision_on_val
    for precision in ("fp32", "int8"):
        out = runtime.outputs(runtime.session(bundle.model_path(precision)), val_split.inputs)
        policy, report = choose_policy(
            out[runtime.OUTPUT_NAME], val_split.labels, bundle.classes, bundle.ok_class,
            manifest.decision.temperature, anomaly=out.get(runtime.ANOMALY),
        )  # fmt: skip
        stored = bundle.policy_for(precision)
        assert stored == manifest.models[precision].decision
        assert stored.prob_floor == pytest.approx(policy.prob_floor, abs=1e-5)
        assert stored.margin == pytest.approx(policy.margin, abs=1e-5)
        for name, threshold in policy.thresholds.items():
            assert stored.thresholds[name] == pytest.approx(threshold, abs=1e-5)
        assert by_precision[precision]["n_val"] == report["n_val"]
        assert config_policy(bundle, DecisionOverrides(), precision) == stored
    assert bundle.policy_for("fp32") != bundle.policy_for("int8")  # INT8 moves probabilities
    assert config_policy(bundle, DecisionOverrides(), None) == bundle.policy  # the default's

    doc = manifest.to_json()  # a bundle written before model entries had a decision:
    for entry in doc["models"].values():
        del entry["decision"]
    older = dataclasses.replace(bundle, manifest=Manifest.from_json(doc))
    for precision in ("fp32", "int8"):
        assert older.policy_for(precision) == manifest.decision


def test_broken_calibration_fails_the_gate(
    tiny_run: Path, export_dataset: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    real = quantize.calibrate

    def shrunk(fp32_path, workdir, inputs, method="minmax", batch_size=16):  # type: ignore[no-untyped-def]
        # ranges from inputs at 1% of their scale: every activation saturates in INT8
        return real(fp32_path, workdir, inputs * 0.01, method, batch_size)

    monkeypatch.setattr(quantize, "calibrate", shrunk)
    out = tmp_path / "bundle"
    strict = ExportOptions(require_int8=True, **FAST)
    with pytest.raises(GateFailed) as failed:
        export_run(tiny_run, export_dataset, out, keys[0], strict)
    result = failed.value.result
    assert not result.passed and result.agreement < 0.99
    assert "worst classes" in str(failed.value)
    assert result.worst_classes()[0] in str(failed.value)
    assert not out.exists()  # --require-int8: a failing gate writes no bundle

    # by default the bundle ships FP32 as its default; devices refuse its failed INT8 model
    export_run(tiny_run, export_dataset, out, keys[0], ExportOptions(**FAST))
    bundle = load_bundle(out, keys[1])
    assert bundle.default_precision == "fp32"
    assert bundle.manifest.models["int8"].gate_passed is False
    assert bundle.manifest.evaluation and bundle.manifest.evaluation.gate
    assert bundle.manifest.evaluation.gate.passed is False
    assert bundle.gate_failure("fp32") is None
    assert "top-1 agreement" in str(bundle.gate_failure("int8"))
    with pytest.raises(BackendError, match="did not pass the accuracy gate"):
        open_backend(bundle, "onnxruntime", threads=1, precision="int8")
    open_backend(bundle, "onnxruntime", 1, "int8", allow_failed_gate=True).close()
    open_backend(bundle, "onnxruntime", threads=1).close()  # its default, FP32


def test_keeping_layers_in_fp32(tiny_run: Path, val_split, tmp_path: Path) -> None:
    from lineqc.train.checkpoint import load_model, spec_of

    model, meta = load_model(tiny_run)
    fp32 = onnx_export.export_onnx(model, spec_of(meta), tmp_path / "fp32.onnx")
    cal = quantize.calibrate(fp32, tmp_path / "q", val_split.inputs[:32])
    full = quantize.qdq_counts(quantize.quantize(cal, tmp_path / "all.onnx"))
    ref = runtime.outputs(runtime.session(fp32), val_split.inputs[:16])
    ranking = quantize.sensitivity(cal, val_split.inputs[:16], ref, tmp_path)
    assert sorted(n for n, _ in ranking) == sorted(cal.weighted_nodes)
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)
    keep = [n for n, _ in ranking[:3]]
    partial = quantize.quantize(cal, tmp_path / "partial.onnx", keep_fp32=keep)
    assert quantize.qdq_counts(partial)["DequantizeLinear"] < full["DequantizeLinear"]
    graph = onnx.load(str(partial)).graph
    kept_nodes = [n for n in graph.node if n.name in keep]
    weights = {t.name: t for t in graph.initializer}
    for node in kept_nodes:  # its weight is still a float initializer, not int8 + DQ
        assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT


def test_parity_fails_loudly_when_models_differ(tiny_run: Path, val_split, tmp_path: Path) -> None:
    from lineqc.train.checkpoint import load_model, spec_of

    model, meta = load_model(tiny_run)
    path = onnx_export.export_onnx(model, spec_of(meta), tmp_path / "m.onnx")
    with torch.no_grad():
        model.get_classifier().bias += 1.0  # PyTorch changes after the export: no parity
        model.get_classifier().bias[0] += 2.0
    with pytest.raises(ExportError, match="disagree"):
        onnx_export.check_parity(model, path, val_split.inputs[:8], temperature=1.0)


@pytest.mark.realdata
def test_onnx_parity_on_real_images(magnetic_tile: Path, tmp_path: Path) -> None:
    files = sorted(magnetic_tile.glob("MT_*/Imgs/*.jpg"))[::150][:8]
    assert files, f"no images under {magnetic_tile}"
    frames = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]
    spec = PreprocessSpec(height=96, width=96)
    inputs = preprocess_batch(frames, spec)
    torch.manual_seed(0)
    model = build_model("resnet10t", 6, 1).eval()
    path = onnx_export.export_onnx(model, spec, tmp_path / "real.onnx")
    parity = onnx_export.check_parity(model, path, inputs, temperature=1.0)
    assert parity.n_images == len(files) and parity.max_abs_prob_diff <= 1e-4
    assert np.isfinite(parity.max_abs_logit_diff)


def test_cli_export_json_then_verify(
    lineqc, tiny_run: Path, export_dataset: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "b"
    proc = lineqc(
        "export",
        str(tiny_run),
        "--dataset",
        str(export_dataset),
        "--out",
        str(out),
        "--key",
        str(keys[0]),
        "--json",
        "--calib-size",
        "64",
        "--latency-reps",
        "10",
    )
    gate = json.loads(proc.stdout)
    for key in ("agreement", "macro_f1_fp32", "macro_f1_int8", "passed"):
        assert key in gate
    assert set(gate["latency_ms"]) == {"fp32", "int8"}
    assert {"p50", "p99"} <= set(gate["latency_ms"]["int8"])
    assert lineqc("bundle", "verify", str(out), "--pubkey", str(keys[1])).returncode == 0
    again = lineqc(
        "export",
        str(tiny_run),
        "--dataset",
        str(export_dataset),
        "--out",
        str(out),
        "--key",
        str(keys[0]),
        check=False,
    )
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_errors_name_the_input(lineqc, tiny_run: Path, tmp_path: Path) -> None:
    missing = lineqc("export", str(tiny_run), "--out", str(tmp_path / "b"), check=False)
    assert missing.returncode == 2 and "--dataset" in missing.stderr and "--key" in missing.stderr
    no_run = lineqc(
        "export",
        str(tmp_path / "nope"),
        "--dataset",
        str(tmp_path),
        "--out",
        str(tmp_path / "b"),
        "--key",
        str(tmp_path / "k.key"),
        check=False,
    )
    assert no_run.returncode == 2 and "k.key" in no_run.stderr
    engine = lineqc("export", "build-engine", check=False)
    assert engine.returncode == 2 and "which bundle" in engine.stderr


def test_a_failing_gate_keeps_the_sensitive_layer_in_fp32(
    tiny_run: Path, export_dataset: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    """One layer's input range broken (1% of what calibration saw, so it saturates): the
    gate fails, the sensitivity pass ranks that layer first, and with the most sensitive
    layers in FP32 the gate passes; the bundle says which layers it kept."""
    real = quantize.calibrate
    broken: list[str] = []

    def one_range_broken(fp32_path, workdir, inputs, method="minmax", batch_size=16):  # type: ignore[no-untyped-def]
        cal = real(fp32_path, workdir, inputs, method, batch_size)
        graph = onnx.load(str(cal.prepared)).graph
        node = next(n for n in graph.node if n.name == cal.weighted_nodes[1])
        doc = json.loads(cal.cache.read_text())
        for side in ("lowest", "highest"):
            entry = doc["data"][node.input[0]][side]
            entry["data"] = [v * 0.01 for v in entry["data"]]
        cal.cache.write_text(json.dumps(doc))
        broken[:] = [node.name]
        return cal

    monkeypatch.setattr(quantize, "calibrate", one_range_broken)
    out = tmp_path / "bundle"
    options = ExportOptions(calib_method="minmax", keep_sensitive=4, **FAST)
    result = export_run(tiny_run, export_dataset, out, keys[0], options)
    assert result.gate is not None and result.gate.passed
    kept = result.gate.kept_fp32
    assert kept[0] == broken[0] and len(kept) <= 4  # ranked first, among the few kept
    bundle = load_bundle(out, keys[1])
    assert bundle.manifest.models["int8"].gate_passed is True
    assert bundle.manifest.models["int8"].kept_fp32 == kept

    without = ExportOptions(calib_method="minmax", keep_sensitive=0, overwrite=True, **FAST)
    gate = export_run(tiny_run, export_dataset, out, keys[0], without).gate
    assert gate is not None and not gate.passed and gate.kept_fp32 == []
