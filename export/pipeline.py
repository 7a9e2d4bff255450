"""`lineqc export RUN_DIR`: training run -> ONNX -> INT8 (gated) -> thresholds -> signed bundle.

INT8 is written twice from one calibration: the TensorRT source (signed symmetric
activations) and the ONNX Runtime file (the same grid with UINT8 activations and weights,
which ONNX Runtime's CPU kernels run fast and, unlike INT8 weights, without 16-bit saturation
on CPUs without VNNI; ``quantize.unsigned_activations``, ``unsigned_weights``). The gate,
the thresholds and the latency are those of the ONNX Runtime file, as CPU devices run it.
Thresholds and latency are recorded per precision, so a device applies the policy chosen
for the model it runs (``Bundle.policy_for``).
The export fails unless both files define the same function: the same probabilities on the
validation images under ONNX Runtime's reference Q/DQ execution (``quantize.check_rewrite``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineqc import __version__
from lineqc.datasets.manifest import DatasetError, load, manifest_hash
from lineqc.edge.decision import Rule
from lineqc.edge.manifest import (
    PRECISIONS,
    SCHEMA_VERSION,
    DatasetInfo,
    DefectMapSpec,
    Evaluation,
    GateSummary,
    InputSpec,
    Latency,
    Manifest,
    ModelEntry,
    ModelInfo,
    OutputSpec,
    Precision,
)
from lineqc.edge.signing import load_private_key
from lineqc.train import checkpoint
from lineqc.train.intervals import parts_of
from lineqc.train.model import DefectNet

from . import bundle_writer, calibration_set, data, latency, onnx_export, quantize, runtime
from .errors import ExportError, GateFailed
from .gate import GateLimits, GateResult, run_gate
from .thresholds import choose_policy

AUTO_METHODS = ("percentile", "minmax", "entropy")
SENSITIVITY_IMAGES = 64  # enough to rank layers; the gate itself runs on the whole split


@dataclass
class ExportOptions:
    calib_size: int = 256
    calib_seed: int = 0
    calib_method: str = "auto"  # or one of quantize.METHODS
    gate: bool = True
    limits: GateLimits = field(default_factory=GateLimits)
    # On a failing gate: the 1, 2, 4, ... most sensitive layers kept in FP32, up to this many,
    # until it passes (magnetic-tile: 2 of 49 layers, the first block after the stem).
    keep_sensitive: int = 8
    require_int8: bool = False  # a failing gate fails the export (else: FP32 is the default)
    target_precision: float = 0.95
    review_share: float = 0.05
    decision_rule: Rule = "defect-first"  # or "per-class" (export/thresholds.py)
    anomaly_share: float = 0.02  # OK val frames the anomaly threshold may send to review
    opset: int = onnx_export.OPSET
    parity_tolerance: float = onnx_export.PARITY_TOLERANCE
    parity_images: int = 64
    threads: int = 2
    latency_reps: int = 200
    model_version: str | None = None
    tar: bool = False
    overwrite: bool = False


@dataclass
class ExportResult:
    manifest: dict[str, Any]  # the signed manifest.json, as JSON (a lineqc.edge.manifest.Manifest)
    gate: GateResult | None


def log(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)


def export_run(
    run_dir: Path, dataset: Path, out: Path, key_path: Path, options: ExportOptions
) -> ExportResult:
    key = load_private_key(key_path)  # fail on a bad key before minutes of work
    if out.exists() and not options.overwrite:
        raise ExportError(f"{out}: already exists (use --overwrite to replace it)")
    model, meta = checkpoint.load_model(run_dir)
    spec = checkpoint.spec_of(meta)
    classes, ok_class = list(meta["classes"]), str(meta["ok_class"])
    temperature = float(meta.get("temperature") or 1.0)
    if not meta.get("temperature"):
        log(f"{run_dir} has no fitted temperature; using 1.0")
    manifest = load(dataset)
    if not manifest.records:
        raise DatasetError(f"{dataset}: no manifest.json or no images (not a lineqc dataset?)")
    dataset_hash = manifest_hash(dataset)
    if meta.get("dataset_manifest_hash") not in (None, dataset_hash):
        log(f"{dataset} is not the dataset the run was trained on (manifest hashes differ)")

    val = data.split_inputs(dataset, manifest, "val", meta, spec)
    train_records = [r for r in manifest.in_split("train") if r.label is not None]
    calib_records = calibration_set.calibration_records(
        train_records, options.calib_size, options.calib_seed
    )
    with tempfile.TemporaryDirectory(prefix="lineqc-export-") as tmp:
        work = Path(tmp)
        fp32_path = work / "model.fp32.onnx"
        log(f"ONNX (opset {options.opset}) of {meta['model']}")
        onnx_export.export_onnx(model, spec, fp32_path, options.opset)
        parity = onnx_export.check_parity(
            model,
            fp32_path,
            val.inputs[: options.parity_images],
            temperature,
            options.parity_tolerance,
            options.threads,
        )
        log(f"parity on {parity.n_images} val images: max |dp| {parity.max_abs_prob_diff:.1e}")

        calib_inputs = data.load_inputs(dataset, calib_records, spec, "load calibration")
        trt_path, int8_path = work / "model.int8.tensorrt.onnx", work / "model.int8.onnx"
        fp32_out = runtime.outputs(runtime.session(fp32_path, options.threads), val.inputs)
        ok_index = classes.index(ok_class)

        def int8_outputs() -> dict[str, np.ndarray]:  # the ONNX Runtime file's, on val
            return runtime.outputs(runtime.session(int8_path, options.threads), val.inputs)

        int8_out: dict[str, np.ndarray] | None = None

        def gate_of(keep: list[str]) -> GateResult:
            nonlocal int8_out
            int8_out = int8_outputs()
            result = run_gate(
                fp32_out,
                int8_out,
                val.labels,
                classes,
                ok_index,
                temperature,
                options.limits,
                parts_of(val.records),
            )
            result.kept_fp32 = keep
            return result

        # "auto": no one range method suits every model (percentile clipped the outliers of
        # the magnetic-tile resnet18 that min-max kept; a tiny resnet10t went the other way),
        # so try each in turn and keep the first the gate passes (or, if none does, the one
        # that came closest).
        methods = AUTO_METHODS if options.calib_method == "auto" else (options.calib_method,)
        gate: GateResult | None = None
        tried: list[tuple[GateResult, quantize.Calibrated]] = []
        for method in methods:
            log(f"INT8: {method} calibration on {len(calib_records)} train images")
            cal = quantize.calibrate(fp32_path, work / "quant", calib_inputs, method)
            write_int8(cal, trt_path, int8_path, [])
            if not options.gate:
                break
            gate = gate_of([])
            tried.append((gate, cal))
            log(
                f"gate with {method} calibration: agreement {gate.agreement:.4f}, "
                f"{'passed' if gate.passed else 'failed'}"
            )
            if gate.passed:
                break
        if gate is not None:
            if not gate.passed:
                cal = max(tried, key=lambda t: t[0].agreement)[1]  # the closest calibration
            if not gate.passed and options.keep_sensitive > 0:
                gate = _retry_with_fp32_layers(
                    cal, trt_path, int8_path, val.inputs, fp32_out, gate_of, work, options
                )
            if not gate.passed and options.require_int8:
                raise GateFailed(gate)
            if not gate.passed:
                write_int8(cal, trt_path, int8_path, [])
                gate = gate_of([])  # of the files kept
                log(
                    "INT8 failed the accuracy gate: the bundle keeps FP32 as its default and "
                    f"its INT8 model ({cal.method} calibration) marked as failed, which devices "
                    "refuse to run (--require-int8: no bundle instead)"
                )

        def reference_logits(path: Path) -> np.ndarray:  # Q/DQ as the ONNX spec defines them
            sess = runtime.session(path, options.threads, optimize=False)
            return runtime.logits(sess, val.inputs, desc="int8 files")

        rewrite = quantize.check_rewrite(
            reference_logits(trt_path), reference_logits(int8_path), temperature
        )
        log(
            f"INT8 ONNX Runtime file vs TensorRT source on {rewrite.n_images} val images "
            f"(reference Q/DQ execution): max |dp| {rewrite.max_abs_prob_diff:.1e}"
        )
        if int8_out is None:  # no gate: not run yet
            int8_out = int8_outputs()

        log(f"latency on this CPU ({options.threads} threads, batch 1)")
        lat = latency.measure(
            {
                p: latency.onnx_runner(m, spec, options.threads)
                for p, m in (("fp32", fp32_path), ("int8", int8_path))
            },
            reps=options.latency_reps,
        )
        eligible: list[Precision] = (
            ["fp32", "int8"] if gate is not None and gate.passed else ["fp32"]
        )
        default = min(eligible, key=lambda p: lat[p]["p50"])
        if gate is not None:
            gate.latency_ms = {p: {"p50": v["p50"], "p99": v["p99"]} for p, v in lat.items()}

        # A policy per precision, each chosen on that model's own outputs: INT8 moves the
        # probabilities, so thresholds chosen on FP32 do not keep their precision on INT8.
        chosen = {
            p: choose_policy(
                out[runtime.OUTPUT_NAME],
                val.labels,
                classes,
                ok_class,
                temperature,
                options.target_precision,
                options.review_share,
                out.get(runtime.ANOMALY),
                options.anomaly_share,
                options.decision_rule,
            )
            for p, out in (("fp32", fp32_out), ("int8", int8_out))
        }
        policy, decision_report = chosen[default]
        fp32_file, int8_file = bundle_writer.MODEL_FILES["fp32"], bundle_writer.MODEL_FILES["int8"]
        trt_file = bundle_writer.TENSORRT_FILES["int8"]
        doc = Manifest(
            schema_version=SCHEMA_VERSION,
            model=ModelInfo(
                name=meta["model"],
                version=options.model_version or time.strftime("%Y%m%d.%H%M%S", time.gmtime()),
                run_id=meta.get("run_id"),
                epoch=meta.get("epoch"),
            ),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            created_by=f"lineqc {__version__}",
            classes=classes,
            ok_class=ok_class,
            input=InputSpec(
                name=runtime.INPUT_NAME,
                layout="NCHW",
                dtype="float32",
                channels=spec.channels,
                height=spec.height,
                width=spec.width,
            ),
            output=OutputSpec(name=runtime.OUTPUT_NAME, kind="logits", classes=len(classes)),
            defect_map=(
                DefectMapSpec(
                    output=runtime.DEFECT_MAP,
                    kind="probability",
                    layout="N1HW",
                    stride=DefectNet.stride,
                    covers="the model input; lineqc.edge.defect_map.frame_cells crops the "
                    "frame's cells",
                )
                if runtime.DEFECT_MAP in fp32_out
                else None
            ),
            preprocess=spec,
            decision=policy,  # the default precision's, as older devices read it
            dataset=DatasetInfo(
                manifest_hash=dataset_hash,
                training_manifest_hash=meta.get("dataset_manifest_hash"),
            ),
            models={
                "fp32": ModelEntry(file=fp32_file, opset=options.opset, decision=chosen["fp32"][0]),
                "int8": ModelEntry(
                    file=int8_file,
                    tensorrt_file=trt_file,
                    opset=options.opset,
                    decision=chosen["int8"][0],
                    quantization="explicit Q/DQ; weights int8 per-channel symmetric; "
                    "activations uint8 zero point 128 in file (ONNX Runtime; Relu between Q/DQ "
                    "as LeakyRelu alpha 0), int8 symmetric in tensorrt_file (TensorRT): the "
                    "same quantization grid and function",
                    calibration={
                        "method": cal.method,
                        "images": len(calib_records),
                        "seed": options.calib_seed,
                        "split": "train",
                        "strata": "label x session",
                    },
                    kept_fp32=gate.kept_fp32 if gate else [],
                    qdq_nodes=quantize.qdq_counts(int8_path),
                    gate_passed=bool(gate and gate.passed),
                ),
            },
            default_precision=default,
            engines=[],
            evaluation=Evaluation(
                parity=vars(parity),
                int8_tensorrt_vs_onnxruntime=vars(rewrite),
                gate=GateSummary.model_validate(gate.to_json()) if gate else None,
                decision_on_val=decision_report,  # the default precision's
                decision_on_val_by_precision={p: report for p, (_, report) in chosen.items()},
                training_test_metrics=meta.get("test_metrics"),
            ),
            latency_ms={p: Latency(p50=lat[p]["p50"], p99=lat[p]["p99"]) for p in PRECISIONS},
            latency_environment=latency.environment(options.threads),
            files={},  # seal's
            drift_reference=data.drift_reference(dataset, manifest.in_split("train"), "train"),
        )
        signed = bundle_writer.write_bundle(
            out,
            doc,
            {fp32_file: fp32_path, int8_file: int8_path, trt_file: trt_path},
            key,
            options.tar,
            options.overwrite,
        )
    log(f"signed bundle {out} (default precision {default})")
    return ExportResult(signed.to_json(), gate)


def write_int8(cal: quantize.Calibrated, trt_path: Path, ort_path: Path, keep: list[str]) -> None:
    """Both INT8 files: the TensorRT source, then its UINT8 ONNX Runtime rewrite."""
    quantize.quantize(cal, trt_path, keep_fp32=keep)
    quantize.write_onnxruntime_model(trt_path, ort_path)


def _retry_with_fp32_layers(
    cal: quantize.Calibrated,
    trt_path: Path,
    int8_path: Path,
    val_inputs: np.ndarray,
    fp32_out: dict[str, np.ndarray],
    gate_of: Any,
    work: Path,
    options: ExportOptions,
) -> GateResult:
    """Keep the 1, 2, 4, ... most sensitive layers in FP32 until the gate passes."""
    n = SENSITIVITY_IMAGES
    log(
        f"gate failed ({cal.method} calibration); ranking {len(cal.weighted_nodes)} layers "
        "by INT8 sensitivity"
    )
    reference = {name: out[:n] for name, out in fp32_out.items()}
    ranking = quantize.sensitivity(cal, val_inputs[:n], reference, work, options.threads)
    k, gate = 1, None
    while True:
        keep = [name for name, _ in ranking[:k]]
        write_int8(cal, trt_path, int8_path, keep)
        gate = gate_of(keep)
        log(f"  {k} layer(s) in FP32: {'passed' if gate.passed else '; '.join(gate.failures)}")
        if gate.passed or k >= min(options.keep_sensitive, len(ranking)):
            return gate
        k = min(2 * k, options.keep_sensitive, len(ranking))
