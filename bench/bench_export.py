"""Model-only latency on this CPU: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8.

    python bench/bench_export.py [--run RUN_DIR] [--model resnet18] [--size 224] [--json]

With ``--run`` the model is the trained run's (e.g. the magnetic-tile model); otherwise a timm
model by name with random weights (weights do not change speed). All are measured in one
run, batch 1, ONNX Runtime and PyTorch both on ``--threads`` threads. The INT8 models are
the export's own two Q/DQ files, calibrated on random inputs when no dataset is given:
``ort_int8`` is the bundle's ONNX Runtime file (UINT8 activations), the one CPU devices run;
``ort_int8_trt_src`` is the TensorRT source (INT8 symmetric activations, what TensorRT
compiles) run by ONNX Runtime, shown to make plain why the bundle carries both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineqc.edge.preprocess import PreprocessSpec
from lineqc.export import latency, onnx_export, quantize


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, PreprocessSpec, str]:
    if args.run:
        from lineqc.train.checkpoint import load_model, spec_of

        model, meta = load_model(args.run)
        return model, spec_of(meta), f"trained run {args.run} ({meta['model']})"
    from lineqc.train.model import build_model

    model = build_model(args.model, args.classes, args.channels).eval()
    spec = PreprocessSpec(
        height=args.size,
        width=args.size,
        channels=args.channels,
        mean=(0.5,) * args.channels,
        std=(0.25,) * args.channels,
    )
    return model, spec, f"timm {args.model}, random weights (no run given)"


def calibration_inputs(args: argparse.Namespace, spec: PreprocessSpec) -> tuple[np.ndarray, str]:
    if args.dataset:
        from lineqc.datasets.manifest import load
        from lineqc.export.calibration_set import calibration_records
        from lineqc.export.data import load_inputs

        train = [r for r in load(args.dataset).in_split("train") if r.label is not None]
        records = calibration_records(train, args.calib_size, seed=0)
        return load_inputs(args.dataset, records, spec, "calibration"), f"{args.dataset} train"
    rng = np.random.default_rng(0)
    shape = (args.calib_size, spec.channels, spec.height, spec.width)
    return rng.standard_normal(shape).astype(np.float32), "random inputs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="training run folder (else timm --model)")
    parser.add_argument("--dataset", type=Path, help="calibrate on its train split")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--calib-size", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, spec, source = build(args)
    calib, calib_source = calibration_inputs(args, spec)
    x = latency.example_input(spec)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        fp32 = onnx_export.export_onnx(model, spec, Path(tmp) / "fp32.onnx")
        cal = quantize.calibrate(fp32, Path(tmp) / "q", calib)
        trt_src = quantize.quantize(cal, Path(tmp) / "int8.tensorrt.onnx")
        int8 = quantize.write_onnxruntime_model(trt_src, Path(tmp) / "int8.onnx")
        eager_input = torch.from_numpy(x)

        def eager() -> object:
            with torch.inference_mode():
                return model(eager_input)

        # measured in turns, so that load from other processes falls on all alike
        results = latency.measure(
            {
                "pytorch_eager": eager,
                "ort_fp32": latency.onnx_runner(fp32, spec, args.threads),
                "ort_int8": latency.onnx_runner(int8, spec, args.threads),
                "ort_int8_trt_src": latency.onnx_runner(trt_src, spec, args.threads),
            },
            args.reps,
            args.warmup,
        )
    base = results["ort_fp32"]["p50"]
    env = latency.environment(args.threads)
    report: dict[str, Any] = {
        "model": source,
        "input": [1, spec.channels, spec.height, spec.width],
        "calibration": calib_source,
        "environment": env,
        "latency_ms": results,
        "speedup_vs_ort_fp32_p50": {k: base / v["p50"] for k, v in results.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model: {source}; input {report['input']}; calibration: {calib_source}")
    print(f"CPU: {env['processor']}; ONNX Runtime {env['onnxruntime']}; {args.threads} threads")
    print(f"{'backend':18s} {'p50 ms':>8s} {'p99 ms':>8s} {'x vs ORT FP32':>14s}")
    for name, r in results.items():
        print(f"{name:18s} {r['p50']:8.2f} {r['p99']:8.2f} {base / r['p50']:14.2f}")
    print("ort_int8: the bundle's ONNX Runtime file (UINT8 activations, zero point 128);")
    print("ort_int8_trt_src: its TensorRT source (INT8 symmetric), same grid, on ONNX Runtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
