"""Explicit INT8 quantization: calibrate once, write the Q/DQ ONNX files of the bundle.

Weights are per-channel symmetric INT8, activations symmetric INT8 (zero point 0, as
TensorRT requires). The activation ranges are computed once and cached, so that quantizing
again with some layers kept in FP32 (after the sensitivity pass) costs no recalibration.

Two files come out of one calibration (a design choice, see ``unsigned_activations``):
the *TensorRT source* with signed symmetric activations, which ``lineqc export
build-engine`` and the device's TensorRT backend compile, and the *ONNX Runtime* file, the
same model with every activation quantizer rewritten to UINT8 with zero point 128 and every
weight to UINT8 with zero point 128 too (``unsigned_weights``). The files define the same
quantization grid (q_u8 = q_s8 + 128, same scale), so they compute the same function; but
ONNX Runtime's x86 CPU kernels are fast only for UINT8 activations, and run the signed file
slower than FP32 (resnet18 224x224, 2 threads: FP32 12-15 ms, signed INT8 16-18 ms, UINT8
about 5 ms). The ONNX Runtime file also has its Q/DQ-wrapped Relus written as
LeakyRelu(alpha=0), the same function that ONNX Runtime fuses into one lookup table
(``relus_as_lookup_tables``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from lineqc.edge.decision import softmax

from . import runtime
from .errors import ExportError

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a sensitivity pass ranks
# Modules never quantized (ONNX node names carry the module path): the anomaly score
# (``DefectNet.memory``) is a nearest-neighbour distance, |p|^2 - 2 p.b + |b|^2, a small
# difference of large numbers that an 8-bit grid erases; the defect map (``map_head``) feeds
# its maximum to the class head (``head``), and the maximum of 1,024 cells on an 8-bit grid
# moved p(OK) by up to 0.25 on magnetic-tile validation frames. Together a few percent of
# the compute; their inputs are quantized like the rest.
FP32_SCOPES = ("memory", "map_head", "head")


def in_fp32_scope(node_name: str) -> bool:
    return any(f"/{scope}/" in node_name for scope in FP32_SCOPES)


# max |probability difference| allowed between the ONNX Runtime file and the TensorRT source,
# both run by ONNX Runtime with graph optimizations off: they are the same function
REWRITE_TOLERANCE = 1e-6


# Batches the calibrator holds in memory at once: ORT keeps every activation of a chunk
# (EfficientNet-Lite0 at 256 px: about 60 MB an image; all 256 calibration images at once
# ran a 24 GB machine out of memory), so ranges and histograms are merged chunk by chunk.
CHUNK = 16


class _ArrayReader(CalibrationDataReader):
    """Feeds preprocessed inputs to the calibrator in batches, a chunk at a time (ORT calls
    ``set_range`` per chunk), with a progress bar over all of them."""

    def __init__(self, inputs: np.ndarray, batch_size: int, desc: str):
        self._batches = [
            {runtime.INPUT_NAME: inputs[s : s + batch_size]}
            for s in range(0, len(inputs), batch_size)
        ]
        self._bar = tqdm(total=len(self._batches), desc=desc, leave=False)
        self._pending = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._pending, None)
        if batch is not None:
            self._bar.update()
        return batch

    def chunk(self) -> int:
        """The largest chunk of at most CHUNK batches that divides them evenly (ORT's rule)."""
        return max(c for c in range(1, min(CHUNK, len(self)) + 1) if len(self) % c == 0)


@dataclass
class Calibrated:
    """A model prepared for quantization and its cached activation ranges."""

    prepared: Path  # the FP32 model after ORT's pre-processing (shapes, BN folded)
    cache: Path
    method: str
    n_images: int
    weighted_nodes: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)  # in FP32_SCOPES: never quantized


def calibrate(
    fp32_path: Path,
    workdir: Path,
    inputs: np.ndarray,
    method: str = "percentile",
    batch_size: int = 16,
) -> Calibrated:
    """Pre-process the FP32 model and compute activation ranges on ``inputs``."""
    if method not in METHODS:
        raise ExportError(f"calibration method {method!r} is not one of {sorted(METHODS)}")
    if len(inputs) == 0:
        raise ExportError("the calibration set is empty (no training images?)")
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = workdir / "prepared.onnx"
    # ORT's symbolic shape inference gives up on some graphs (a DefectNet's size-matched
    # upsampling), dumping its state into the working folder: run it in ours, and fall back
    # to ONNX's own shape inference, which serves a CNN as well.
    with contextlib.chdir(workdir.resolve()):
        try:
            quant_pre_process(str(fp32_path.resolve()), str(prepared.resolve()))
        except Exception:
            quant_pre_process(
                str(fp32_path.resolve()), str(prepared.resolve()), skip_symbolic_shape=True
            )
    cache = workdir / f"calibration.{method}.json"
    cache.unlink(missing_ok=True)
    if method != "minmax":
        batch_size = 1  # ORT's histogram calibrators stack batches: they must all be one size
    reader = _ArrayReader(inputs, batch_size, f"calibrate ({method})")
    _quiet_quantize(prepared, workdir / "calibrated.int8.onnx", cache, method, reader=reader)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    fp32 = [n.name for n in graph.node if in_fp32_scope(n.name)]
    nodes = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS and n.name not in fp32]
    return Calibrated(prepared, cache, method, len(inputs), nodes, fp32)


def quantize(
    cal: Calibrated,
    out_path: Path,
    keep_fp32: Iterable[str] = (),
    only: Sequence[str] | None = None,
) -> Path:
    """Write the Q/DQ model; ``keep_fp32`` nodes stay unquantized, ``only`` limits the rest."""
    exclude = [*keep_fp32, *cal.fp32_nodes]
    _quiet_quantize(cal.prepared, out_path, cal.cache, cal.method, exclude=exclude, only=only)
    return out_path


def _quiet_quantize(
    prepared: Path,
    out_path: Path,
    cache: Path,
    method: str,
    reader: CalibrationDataReader | None = None,
    exclude: list[str] | None = None,
    only: Sequence[str] | None = None,
) -> None:
    options: dict[str, bool | int] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if isinstance(reader, _ArrayReader):  # ORT's "strided" collection: a chunk at a time
        options["CalibStridedMinMax"] = reader.chunk()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice about pre-processing we already did
    try:
        # ORT's calibrators print progress to stdout, which belongs to `--json` output here
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=list(only) if only is not None else None,
                nodes_to_exclude=exclude or None,
                calibrate_method=METHODS[method],
                extra_options=options,
                calibration_cache_path=str(cache),
            )
    finally:
        root.setLevel(level)


def qdq_counts(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a model has (0 for an FP32 model)."""
    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: ops.get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")}


def sensitivity(
    cal: Calibrated,
    inputs: np.ndarray,
    reference: Mapping[str, np.ndarray],
    workdir: Path,
    threads: int = 2,
) -> list[tuple[str, float]]:
    """Rank weighted layers by the error that quantizing that layer alone causes.

    The error is summed over every output the gate checks (logits, defect map, anomaly
    score): each output's mean squared difference from the FP32 ``reference`` relative to
    the reference's variance. Logits alone rank the layers the anomaly score needs last,
    and that score is what failed the gate most on magnetic-tile. Most sensitive first.
    """
    scales = {name: float(np.var(ref)) or 1.0 for name, ref in reference.items()}
    scores = []
    probe = workdir / "sensitivity.onnx"
    for node in tqdm(cal.weighted_nodes, desc="sensitivity", leave=False):
        quantize(cal, probe, only=[node])
        got = runtime.outputs(runtime.session(probe, threads), inputs, desc=node)
        error = sum(
            float(np.mean((got[name] - ref) ** 2)) / scales[name] for name, ref in reference.items()
        )
        scores.append((node, error))
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s[1])


def unsigned_activations(model: onnx.ModelProto) -> int:
    """Rewrite the activation quantizers of a Q/DQ model from INT8 to UINT8, in place.

    Design: TensorRT's explicit quantization needs signed INT8 activations with zero point
    0, and ONNX Runtime on x86 CPUs runs exactly that slowly (it fuses only U8 activations
    with S8 weights into integer kernels). A signed quantizer (scale s, zero point z) and an
    unsigned one (scale s, zero point z + 128) define the same grid: q_u8 = q_s8 + 128, so
    the dequantized values, and hence the model's outputs under the ONNX spec's Q/DQ
    semantics, are the same (``check_rewrite``). The bundle ships both files: this rewrite
    is the one ONNX Runtime runs, the signed one is what TensorRT compiles.

    Rewritten: the INT8 zero point of every ``QuantizeLinear`` (an activation quantizer)
    and of every ``DequantizeLinear`` that reads such a quantizer's output; both become
    UINT8 with value z + 128 (128 for this export's symmetric activations). Left alone:
    weights and biases, which are stored pre-quantized as initializers and only feed a
    ``DequantizeLinear`` (their zero points stay INT8 / INT32). A zero-point initializer
    that something else also reads is copied, never changed under the other reader. Only
    the top-level graph is rewritten. Returns how many zero points were rewritten (0 for a
    model that has no signed activation quantizer, e.g. an FP32 one or a rewritten one).
    Raises ExportError where the model is not plain Q/DQ (a quantized tensor read by
    something other than ``DequantizeLinear``, or a zero point that is no initializer).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = _readers(graph)
    outputs = {o.name for o in graph.output}

    def signed_zero_point(node: onnx.NodeProto) -> str | None:
        if len(node.input) < 3 or not node.input[2]:
            return None  # no zero point: UINT8 already
        zp = node.input[2]
        if zp not in inits:
            raise ExportError(f"{node.op_type} {node.name!r}: zero point {zp!r} is no initializer")
        return zp if inits[zp].data_type == onnx.TensorProto.INT8 else None

    # the (node, zero point) pairs whose zero point must become UINT8
    targets: list[tuple[onnx.NodeProto, str]] = []
    retyped: list[str] = []  # quantized activations: INT8 tensors that become UINT8
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zp = signed_zero_point(node)
        if zp is None:
            continue
        q_out = node.output[0]
        if q_out in outputs:
            raise ExportError(f"QuantizeLinear {node.name!r}: its INT8 output is a model output")
        targets.append((node, zp))
        retyped.append(q_out)
        for reader, _ in consumers[q_out]:
            if reader.op_type != "DequantizeLinear":
                raise ExportError(
                    f"QuantizeLinear {node.name!r} feeds {reader.op_type} {reader.name!r}: "
                    "not a plain Q/DQ model"
                )
            dq_zp = signed_zero_point(reader)
            if dq_zp is None:
                raise ExportError(
                    f"DequantizeLinear {reader.name!r} reads an INT8 activation without an "
                    "INT8 zero point"
                )
            targets.append((reader, dq_zp))
    if not targets:
        return 0

    rewriting = {(id(node), zp) for node, zp in targets}
    replacement: dict[str, str] = {}
    for zp in dict.fromkeys(zp for _, zp in targets):
        others = [n for n, slot in consumers[zp] if (id(n), zp) not in rewriting or slot != 2]
        # a copy where a weight DQ (or anything else) also reads it
        replacement[zp] = _unsigned(graph, inits, zp, in_place=not (others or zp in outputs))
    for node, zp in targets:
        node.input[2] = replacement[zp]
        for attr in node.attribute:  # opset 21+: an explicit output type must follow
            if attr.name == "output_dtype" and attr.i == onnx.TensorProto.INT8:
                attr.i = onnx.TensorProto.UINT8
    for info in graph.value_info:
        if info.name in retyped and info.type.tensor_type.elem_type == onnx.TensorProto.INT8:
            info.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return len(replacement)


def unsigned_weights(model: onnx.ModelProto) -> int:
    """Rewrite the INT8 weights of a Q/DQ model as UINT8 with zero point z + 128, in place.

    Why: on an x86 CPU without VNNI (AVX2 only), ONNX Runtime's UINT8 x INT8 kernels add
    pairs of products in 16 bits with saturation (``vpmaddubsw``). With activations on a
    symmetric grid stored as UINT8 around 128, two products of a large activation and a
    large weight (255 x 127 x 2 = 64,770) overflow: on magnetic-tile fold 0 (an AMD EPYC,
    AVX2) the INT8 file's top-1 agreement with FP32 fell from 0.951 under reference Q/DQ
    execution to 0.805 in the fused kernels, and its anomaly score's correlation with
    FP32's from 0.992 to 0.302. UINT8 x UINT8 kernels widen before they add, on every CPU,
    and gave 0.951 and 0.992 there. Same grid (q_u8 = q_s8 + 128, same scale): the same
    function, bit for bit under reference execution (``check_rewrite``).

    Rewritten: every INT8 initializer read only by ``DequantizeLinear`` as its input, and
    that node's zero point (copied where something else also reads it). Biases (INT32) and
    activations are left alone. Returns how many weights were rewritten.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers = _readers(graph)
    weights = {
        name
        for name, t in inits.items()
        if t.data_type == onnx.TensorProto.INT8
        and readers[name]
        and all(n.op_type == "DequantizeLinear" and slot == 0 for n, slot in readers[name])
    }
    replacement: dict[str, str] = {}  # INT8 zero point -> its UINT8 one
    for name in sorted(weights):
        for node, _ in readers[name]:
            zp = node.input[2] if len(node.input) > 2 else ""
            if zp not in inits or inits[zp].data_type != onnx.TensorProto.INT8:
                raise ExportError(
                    f"DequantizeLinear {node.name!r}: weight {name!r} has no INT8 zero point"
                )
            if zp not in replacement:
                only_weights = all(
                    n.op_type == "DequantizeLinear" and slot == 2 and n.input[0] in weights
                    for n, slot in readers[zp]
                )
                # a copy where an activation (or anything else) also reads it
                replacement[zp] = _unsigned(graph, inits, zp, in_place=only_weights)
            node.input[2] = replacement[zp]
        _unsigned(graph, inits, name, in_place=True)
    return len(weights)


def _readers(graph: onnx.GraphProto) -> defaultdict[str, list[tuple[onnx.NodeProto, int]]]:
    """Tensor name -> the (node, input slot) pairs that read it (empty for none)."""
    readers: defaultdict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for slot, name in enumerate(node.input):
            readers[name].append((node, slot))
    return readers


def _unsigned(
    graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], name: str, in_place: bool
) -> str:
    """The INT8 initializer ``name`` on the same grid as UINT8 (q + 128): rewritten in place,
    or added as a copy under a fresh name that other readers do not see. Returns its name."""
    values = onnx.numpy_helper.to_array(inits[name]).astype(np.int16) + 128
    target = name if in_place else _fresh_name(f"{name}_u8", inits)
    unsigned = onnx.numpy_helper.from_array(values.astype(np.uint8), target)
    if in_place:
        inits[name].CopyFrom(unsigned)
    else:
        graph.initializer.append(unsigned)
        inits[target] = unsigned
    return target


def _fresh_name(base: str, taken: dict[str, onnx.TensorProto]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}{i}", i + 1
    return name


def relus_as_lookup_tables(model: onnx.ModelProto) -> int:
    """Turn each ``DequantizeLinear -> Relu -> QuantizeLinear`` into ``LeakyRelu(alpha=0)``.

    The same function: LeakyRelu with alpha 0 is Relu except that it gives -0.0 for negative
    inputs, which only ``QuantizeLinear`` reads here (and quantizes to the zero point, like
    0.0). But ONNX Runtime fuses DQ -> LeakyRelu -> Q on UINT8 into one 256-entry lookup
    table (QLinearLeakyRelu, bit-identical to the three nodes), while a Relu stays three
    float passes over the tensor: a symmetric activation grid keeps a Q/DQ pair on both
    sides of every Relu (resnet18 224x224: 5.4 -> 4.7 ms). For the ONNX Runtime file only;
    TensorRT fuses Relu itself. Returns how many Relu nodes were replaced.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _readers(graph)
    outputs = {o.name for o in graph.output}
    replaced = 0
    for node in graph.node:
        if node.op_type != "Relu" or node.domain not in ("", "ai.onnx"):
            continue
        source = producers.get(node.input[0])
        readers = consumers[node.output[0]]
        if (
            source is None
            or source.op_type != "DequantizeLinear"
            or not readers
            or any(r.op_type != "QuantizeLinear" for r, _ in readers)
            or node.output[0] in outputs
        ):
            continue
        node.op_type = "LeakyRelu"
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("alpha", 0.0))
        replaced += 1
    return replaced


def write_onnxruntime_model(tensorrt_path: Path, out_path: Path) -> Path:
    """The ONNX Runtime file from the TensorRT source file, checked by the ONNX checker:
    ``unsigned_activations``, ``unsigned_weights``, then ``relus_as_lookup_tables``."""
    model = onnx.load(str(tensorrt_path))
    unsigned_activations(model)
    unsigned_weights(model)
    relus_as_lookup_tables(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(
            f"{tensorrt_path}: the ONNX checker rejects its UINT8-activation rewrite ({exc})"
        ) from None
    onnx.save(model, str(out_path))
    return out_path


@dataclass
class RewriteCheck:
    """The ONNX Runtime file against the TensorRT source, both run by ONNX Runtime."""

    n_images: int
    max_abs_prob_diff: float
    max_abs_logit_diff: float
    tolerance: float
    execution: str = "onnxruntime, graph optimizations off (reference Q/DQ semantics)"


def check_rewrite(
    tensorrt_logits: np.ndarray,
    onnxruntime_logits: np.ndarray,
    temperature: float,
    tolerance: float = REWRITE_TOLERANCE,
) -> RewriteCheck:
    """Raise ExportError unless the two INT8 files gave the same probabilities.

    Compare logits from ONNX Runtime with graph optimizations off (``runtime.session(...,
    optimize=False)``): there every Q/DQ node runs as the ONNX spec defines it, and the
    rewrite is exact (bit-identical logits). With optimizations on, ONNX Runtime fuses the
    two files into different kernels (e.g. UINT8 average pooling becomes QLinearAveragePool,
    INT8 pooling stays float) that round ties differently: outputs then differ by about one
    quantization step here and there, as a TensorRT engine's do, which is for the gate (run
    on the ONNX Runtime file as devices run it) to judge, not this check.
    """
    if tensorrt_logits.shape != onnxruntime_logits.shape:
        raise ExportError(
            f"the INT8 ONNX Runtime file and its TensorRT source give outputs of different "
            f"shapes ({onnxruntime_logits.shape} vs {tensorrt_logits.shape})"
        )
    probs = np.abs(softmax(tensorrt_logits, temperature) - softmax(onnxruntime_logits, temperature))
    check = RewriteCheck(
        n_images=len(tensorrt_logits),
        max_abs_prob_diff=float(probs.max()) if probs.size else 0.0,
        max_abs_logit_diff=float(np.abs(tensorrt_logits - onnxruntime_logits).max())
        if probs.size
        else 0.0,
        tolerance=tolerance,
    )
    if check.max_abs_prob_diff > tolerance:
        raise ExportError(
            "the INT8 ONNX Runtime file (UINT8 activations) and its TensorRT source (INT8 "
            f"symmetric activations) disagree under ONNX Runtime on {check.n_images} validation "
            f"images: max |probability difference| {check.max_abs_prob_diff:.2e} > "
            f"{tolerance:.0e} (no bundle written)"
        )
    return check
