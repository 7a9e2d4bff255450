"""The two INT8 files of a bundle: the TensorRT source (INT8 symmetric activations) and its
UINT8-activation rewrite that ONNX Runtime runs. Same function, real ONNX Runtime."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lineqc.edge.backends import OnnxRuntimeBackend
from lineqc.edge.bundle import load_bundle, sha256_file
from lineqc.edge.decision import softmax
from lineqc.edge.manifest import Manifest
from lineqc.export import onnx_export, quantize, runtime
from lineqc.export.bundle_writer import TENSORRT_FILES
from lineqc.export.errors import ExportError

QDQ = ("QuantizeLinear", "DequantizeLinear")


def zero_points(path: Path) -> list[tuple[str, str, str, set[int]]]:
    """Per Q/DQ node: op, what it reads (activation or weight), zero point type and values."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    q_outputs = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    found = []
    for node in graph.node:
        if node.op_type not in QDQ:
            continue
        zp = inits[node.input[2]]
        values = set(numpy_helper.to_array(zp).reshape(-1).tolist())
        activation = node.op_type == "QuantizeLinear" or node.input[0] in q_outputs
        reads = "activation" if activation else "weight" if node.input[0] in inits else "other"
        found.append((node.op_type, reads, TensorProto.DataType.Name(zp.data_type), values))
    return found


def save_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    x: tuple[str, list[int]],
    y: tuple[str, list[int]],
) -> Path:
    """A hand-built Q/DQ graph (opset 17) with one float input and one float output."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(x[0], TensorProto.FLOAT, x[1])],
        [helper.make_tensor_value_info(y[0], TensorProto.FLOAT, y[1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


def test_onnxruntime_file_equals_tensorrt_source_on_real_images(
    signed_bundle: Path, keys: tuple[Path, Path], val_split
) -> None:
    bundle = load_bundle(signed_bundle, keys[1])
    ort_file, trt_file = bundle.model_path("int8"), bundle.tensorrt_model_path("int8")
    assert ort_file != trt_file
    x = val_split.inputs
    # reference Q/DQ execution (no fused kernels): the rewrite is exact
    got = runtime.logits(runtime.session(ort_file, optimize=False), x)
    ref = runtime.logits(runtime.session(trt_file, optimize=False), x)
    assert got.shape == (len(x), len(bundle.classes))
    np.testing.assert_array_equal(got, ref)
    assert bundle.manifest.evaluation is not None
    check = bundle.manifest.evaluation.int8_tensorrt_vs_onnxruntime or {}
    assert check["n_images"] == len(x) and check["max_abs_prob_diff"] <= check["tolerance"]
    assert check["tolerance"] == quantize.REWRITE_TOLERANCE
    # as devices run it (fused kernels, their own rounding of ties): still the same classes
    fast = runtime.logits(runtime.session(ort_file), x)
    assert np.abs(softmax(fast, 1.5) - softmax(ref, 1.5)).max() < 0.2


def test_rewrite_moves_activations_and_weights_to_uint8(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    bundle = load_bundle(signed_bundle, keys[1])
    trt = zero_points(bundle.tensorrt_model_path("int8"))
    ort = zero_points(bundle.model_path("int8"))
    assert [(op, reads) for op, reads, _, _ in trt] == [(op, reads) for op, reads, _, _ in ort]
    assert {reads for _, reads, _, _ in ort} == {"activation", "weight"}
    for (_, reads, dtype_trt, v_trt), (_, _, dtype_ort, v_ort) in zip(trt, ort, strict=True):
        if dtype_trt == "INT8":  # signed symmetric for TensorRT, UINT8 128 for ONNX Runtime
            assert (v_trt, dtype_ort, v_ort) == ({0}, "UINT8", {128})
        else:  # biases (INT32) are untouched
            assert (dtype_trt, reads, dtype_ort, v_ort) == ("INT32", "weight", "INT32", v_trt)
    # each weight is the same grid point, moved by 128
    t_graph = onnx.load(str(bundle.tensorrt_model_path("int8"))).graph
    o_graph = onnx.load(str(bundle.model_path("int8"))).graph
    o_inits = {t.name: t for t in o_graph.initializer}
    weights = [t for t in t_graph.initializer if t.data_type == TensorProto.INT8 and t.dims]
    assert weights
    for w in weights:
        assert o_inits[w.name].data_type == TensorProto.UINT8
        moved = numpy_helper.to_array(o_inits[w.name]).astype(np.int16) - 128
        np.testing.assert_array_equal(moved, numpy_helper.to_array(w))
    # Relus between Q/DQ pairs are LeakyRelu(alpha=0) in the ONNX Runtime file, nothing else
    t_ops = [n.op_type for n in t_graph.node]
    o_ops = [n.op_type for n in o_graph.node]
    assert t_ops.count("Relu") > 0 and "LeakyRelu" not in t_ops
    assert o_ops == [{"Relu": "LeakyRelu"}.get(op, op) for op in t_ops]
    # rewriting again changes nothing (no signed quantizer or weight is left)
    model = onnx.load(str(bundle.model_path("int8")))
    assert quantize.unsigned_activations(model) == 0
    assert quantize.unsigned_weights(model) == 0
    assert quantize.relus_as_lookup_tables(model) == 0


def test_fused_kernels_compute_the_grid_without_saturating(tmp_path: Path) -> None:
    """Large activations times large weights: ONNX Runtime's UINT8 x INT8 kernels on x86
    CPUs without VNNI add product pairs in 16 bits with saturation; the file it runs must
    give what the Q/DQ graph defines on any CPU."""
    x_scale, w_scale, y_scale = 0.01, 0.01, 0.1
    w = np.full((2, 8, 3, 3), 127, np.int8)
    w[1] = -127
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(np.full(2, w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(2, np.int8), "w_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["out"]),
    ]
    signed = save_model(
        tmp_path / "signed.onnx", nodes, inits, ("x", [1, 8, 6, 6]), ("out", [1, 2, 6, 6])
    )
    ours = quantize.write_onnxruntime_model(signed, tmp_path / "ours.onnx")
    # activations at +-1.27 (the grid's ends) and a few below: products of 127 x 127
    x = {"x": np.random.default_rng(0).choice([-1.27, -0.6, 0.9, 1.27], (1, 8, 6, 6))}
    x["x"] = x["x"].astype(np.float32)
    ref = runtime.session(signed, optimize=False).run(None, x)[0]
    assert np.abs(ref).max() > 5  # far past what 16-bit pair sums could hold
    got = runtime.session(ours).run(None, x)[0]  # fused, as devices run it
    np.testing.assert_allclose(got, ref, atol=y_scale + 1e-6)  # at most one step (ties)


def test_onnxruntime_runs_its_file_as_integer_kernels(
    signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Why the bundle has two INT8 files: ONNX Runtime fuses the UINT8 one end to end."""
    bundle = load_bundle(signed_bundle, keys[1])

    def optimized_ops(path: Path) -> Counter[str]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
        return Counter(n.op_type for n in graph.node)

    fast = optimized_ops(bundle.model_path("int8"))
    assert fast["QuantizeLinear"] == fast["DequantizeLinear"] == 1  # the input, the logits
    assert fast["QLinearConv"] > 0 and fast["QLinearLeakyRelu"] > 0
    assert not {"Conv", "Relu", "LeakyRelu", "Add"} & set(fast)  # no float layer left
    slow = optimized_ops(bundle.tensorrt_model_path("int8"))
    assert slow["Relu"] > 0 and slow["DequantizeLinear"] > 1  # float work between kernels


def test_bundle_carries_both_files_hashed_and_verifies(
    lineqc, signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    bundle = load_bundle(signed_bundle, keys[1])
    entry = bundle.manifest.models["int8"]
    assert entry.file == "model.int8.onnx"
    assert entry.tensorrt_file == TENSORRT_FILES["int8"] == "model.int8.tensorrt.onnx"
    assert "tensorrt_file" not in bundle.manifest.to_json()["models"]["fp32"]
    for rel in ("model.fp32.onnx", "model.int8.onnx", "model.int8.tensorrt.onnx"):
        assert bundle.manifest.files[rel] == sha256_file(signed_bundle / rel)
    proc = lineqc("bundle", "verify", str(signed_bundle), "--pubkey", str(keys[1]))
    assert proc.returncode == 0 and "3 files intact" in proc.stdout


def test_tensorrt_build_picks_the_tensorrt_source(
    signed_bundle: Path, keys: tuple[Path, Path]
) -> None:
    """`build-engine` and the device's TensorRT backend compile ``tensorrt_model_path``."""
    bundle = load_bundle(signed_bundle, keys[1])
    assert bundle.tensorrt_model_path("int8") == signed_bundle / "model.int8.tensorrt.onnx"
    assert bundle.model_path("int8") == signed_bundle / "model.int8.onnx"
    assert bundle.tensorrt_model_path("fp32") == bundle.model_path("fp32")  # no separate file
    # a bundle without tensorrt_file (written before there were two files) compiles `file`
    doc = bundle.manifest.to_json()
    del doc["models"]["int8"]["tensorrt_file"]
    older = dataclasses.replace(bundle, manifest=Manifest.from_json(doc))
    assert older.tensorrt_model_path("int8") == signed_bundle / "model.int8.onnx"
    for module in ("export/tensorrt_build.py", "edge/backend_tensorrt.py"):  # no tensorrt here
        source = (Path(__file__).resolve().parents[2] / module).read_text()
        assert "tensorrt_model_path(" in source and ".model_path(" not in source


def test_rewrite_splits_a_zero_point_shared_with_weights(tmp_path: Path) -> None:
    """One INT8 zero point read by an activation Q/DQ pair and by a weight DQ: split."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 3, 3, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "shared_zp"),
        numpy_helper.from_array(w, "w_q"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "shared_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "shared_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "shared_zp"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], pads=[1, 1, 1, 1]),
    ]
    signed = save_model(
        tmp_path / "signed.onnx", nodes, inits, ("x", [1, 3, 8, 8]), ("y", [1, 4, 8, 8])
    )
    unsigned = quantize.write_onnxruntime_model(signed, tmp_path / "unsigned.onnx")
    rewritten = onnx.load(str(unsigned)).graph
    by_name = {t.name: t for t in rewritten.initializer}
    q, dq_x, dq_w, _ = rewritten.node
    assert q.input[2] == dq_x.input[2] != dq_w.input[2]  # each its own UINT8 128 now
    for zp in (by_name[q.input[2]], by_name[dq_w.input[2]]):
        assert zp.data_type == TensorProto.UINT8 and numpy_helper.to_array(zp) == 128
    x = {"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32) * 2}
    got = runtime.session(unsigned, optimize=False).run(None, x)[0]
    ref = runtime.session(signed, optimize=False).run(None, x)[0]
    np.testing.assert_array_equal(got, ref)


def test_a_wrong_rewrite_fails_the_check(tiny_run: Path, val_split, tmp_path: Path) -> None:
    from lineqc.train.checkpoint import load_model, spec_of

    model, meta = load_model(tiny_run)
    fp32 = onnx_export.export_onnx(model, spec_of(meta), tmp_path / "fp32.onnx")
    cal = quantize.calibrate(fp32, tmp_path / "q", val_split.inputs[:32])
    trt = quantize.quantize(cal, tmp_path / "trt.onnx")
    ort = quantize.write_onnxruntime_model(trt, tmp_path / "ort.onnx")
    x = val_split.inputs[:32]
    ref = runtime.logits(runtime.session(trt, optimize=False), x)
    ok = quantize.check_rewrite(ref, runtime.logits(runtime.session(ort, optimize=False), x), 1.0)
    assert ok.n_images == 32 and ok.max_abs_prob_diff == 0.0
    # a rewrite that shifts one activation's grid (its dequantizer reads zero point 120
    # where its quantizer wrote 128) is caught
    broken = onnx.load(str(ort))
    quantized = {n.output[0] for n in broken.graph.node if n.op_type == "QuantizeLinear"}
    dq = next(
        n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized
    )
    broken.graph.initializer.append(numpy_helper.from_array(np.array(120, np.uint8), "zp_120"))
    dq.input[2] = "zp_120"
    onnx.save(broken, tmp_path / "broken.onnx")
    got = runtime.logits(runtime.session(tmp_path / "broken.onnx", optimize=False), x)
    with pytest.raises(ExportError, match="disagree under ONNX Runtime"):
        quantize.check_rewrite(ref, got, 1.0)


def test_a_layer_kept_in_fp32_runs_in_fp32(tmp_path: Path) -> None:
    """A layer the export keeps in FP32 reads a dequantized input and feeds a quantized
    output; ONNX Runtime's WeightBiasQuantization would quantize its FP32 weights (the
    small filter's output came out up to 35% off). The export's sessions and the device's
    backend must run it as written."""
    w = np.ones((2, 1, 3, 3), np.float32)
    w[1] *= 0.003  # a depthwise filter 333 times smaller than its neighbour's
    inits = [
        numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([0.1, 0.0003], np.float32), "y_scale"),
        numpy_helper.from_array(np.zeros(2, np.int8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], group=2, pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["y_q"], axis=1),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["logits"], axis=1),
    ]
    path = save_model(
        tmp_path / "kept.onnx", nodes, inits, ("x", [1, 2, 6, 6]), ("logits", [1, 2, 6, 6])
    )
    x = np.random.default_rng(0).uniform(0.2, 1.0, (1, 2, 6, 6)).astype(np.float32)
    ref = runtime.session(path, optimize=False).run(None, {"x": x})[0]
    assert ref[0, 1].min() > 10 * 0.0003  # the small filter's output: many steps above zero
    got = runtime.session(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, atol=0.0003 + 1e-6)  # at most one step (ties)
    device = OnnxRuntimeBackend(path).infer(x)["logits"]
    np.testing.assert_allclose(device, ref, atol=0.0003 + 1e-6)
