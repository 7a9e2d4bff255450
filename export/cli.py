"""`lineqc export RUN_DIR ...` and `lineqc export build-engine BUNDLE`.

One parser for both: the first positional is a run folder, or the literal ``build-engine``
(a run folder of that name is reached as ``./build-engine``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lineqc.edge.decision import RULES
from lineqc.edge.tensorrt_engine import PRECISIONS
from lineqc.errors import LineqcError

BUILD_ENGINE = "build-engine"


def register(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "lineqc export RUN_DIR --dataset DIR --out BUNDLE --key PREFIX.key [options]\n"
        "       lineqc export build-engine BUNDLE --key PREFIX.key --pubkey PREFIX.pub "
        "[--precision P] [--allow-failed-gate]"
    )
    parser.add_argument("target", help=f"training run folder, or '{BUILD_ENGINE}'")
    parser.add_argument("bundle", nargs="?", type=Path, help=f"with {BUILD_ENGINE}: the bundle")
    parser.add_argument("--dataset", type=Path, help="dataset folder (val split: gate, thresholds)")
    parser.add_argument("--out", type=Path, help="bundle folder to write")
    parser.add_argument("--key", type=Path, help="Ed25519 private key (PREFIX.key) to sign with")
    parser.add_argument("--json", action="store_true", help="print the gate as JSON on stdout")
    parser.add_argument("--tar", action="store_true", help="also write BUNDLE.tar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--model-version", help="dotted integers (default: UTC date.time)")
    q = parser.add_argument_group("INT8 calibration and gate")
    q.add_argument(
        "--calib-size", type=int, default=256, help="images from train (default: %(default)s)"
    )
    q.add_argument("--calib-seed", type=int, default=0, help="(default: %(default)s)")
    q.add_argument(
        "--calib-method",
        choices=["auto", "minmax", "entropy", "percentile"],
        default="auto",
        help="activation ranges; auto: percentile, then min-max, then entropy, the first that "
        "passes the gate (default: %(default)s)",
    )
    q.add_argument("--no-gate", action="store_true", help="skip the gate (INT8 never default)")
    q.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="INT8 and FP32 top-1 agreement at least (default: %(default)s)",
    )
    q.add_argument(
        "--max-f1-drop",
        type=float,
        default=0.01,
        help="macro-F1 may fall at most this (0.01 = 1 pt; default: %(default)s)",
    )
    q.add_argument(
        "--max-auroc-drop",
        type=float,
        default=0.005,
        help="defect-vs-OK AUROC may fall at most this (default: %(default)s)",
    )
    q.add_argument(
        "--require-int8",
        action="store_true",
        help="fail the export (no bundle) when INT8 fails the gate; by default the bundle then "
        "keeps FP32 as its default precision and marks its INT8 model as failed",
    )
    q.add_argument(
        "--keep-sensitive",
        type=int,
        default=8,
        metavar="K",
        help="on a failing gate, keep the 1, 2, 4, ... most sensitive layers in FP32, up to K, "
        "until it passes; 0: no retry (default: %(default)s)",
    )
    d = parser.add_argument_group("decision thresholds")
    d.add_argument(
        "--decision-rule",
        choices=RULES,
        default=RULES[0],
        help="defect-first: reject when 1 - p(OK) reaches a threshold, whichever defect "
        "leads; per-class: each class decided by its own threshold, with an uncertainty band "
        "(default: %(default)s)",
    )
    d.add_argument(
        "--target-precision",
        type=float,
        default=0.95,
        help="precision the thresholds keep on validation: of the rejects and of the passes "
        "(defect-first), of each class (per-class) (default: %(default)s)",
    )
    d.add_argument(
        "--review-share",
        type=float,
        default=0.05,
        help="per-class rule: share of validation frames the uncertainty band sends to review "
        "(default: %(default)s)",
    )
    d.add_argument(
        "--anomaly-share",
        type=float,
        default=0.02,
        help="share of OK validation frames the anomaly threshold may send to review (a model "
        "with an anomaly score; default: %(default)s)",
    )
    m = parser.add_argument_group("measurement")
    m.add_argument(
        "--threads",
        type=int,
        default=2,
        help="ONNX Runtime intra-op threads (default: %(default)s)",
    )
    m.add_argument(
        "--latency-reps", type=int, default=200, help="timed runs per model (default: %(default)s)"
    )
    e = parser.add_argument_group(BUILD_ENGINE)
    e.add_argument("--pubkey", type=Path, help="public key to verify the bundle with")
    e.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="the engine's precision (default: the bundle's default precision)",
    )
    e.add_argument(
        "--allow-failed-gate",
        action="store_true",
        help="build an INT8 engine although its accuracy gate failed or was skipped at export "
        "(to diagnose it; devices still refuse to run it)",
    )
    e.add_argument(
        "--workspace-mb",
        type=int,
        default=1024,
        help="TensorRT builder memory (default: %(default)s)",
    )
    e.add_argument(
        "--timing-cache", type=Path, help="timing cache file (default: in the bundle's parent)"
    )
    parser.set_defaults(func=run)


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise LineqcError(f"lineqc export {args.target}: {', '.join(missing)} required")


def run(args: argparse.Namespace) -> int:
    if args.target == BUILD_ENGINE:
        return _build_engine(args)
    _need(args, "dataset", "out", "key")
    from .errors import GateFailed
    from .gate import GateLimits
    from .pipeline import ExportOptions, export_run

    options = ExportOptions(
        calib_size=args.calib_size,
        calib_seed=args.calib_seed,
        calib_method=args.calib_method,
        gate=not args.no_gate,
        limits=GateLimits(args.min_agreement, args.max_f1_drop, args.max_auroc_drop),
        keep_sensitive=args.keep_sensitive,
        target_precision=args.target_precision,
        review_share=args.review_share,
        decision_rule=args.decision_rule,
        anomaly_share=args.anomaly_share,
        threads=args.threads,
        latency_reps=args.latency_reps,
        model_version=args.model_version,
        tar=args.tar,
        overwrite=args.overwrite,
        require_int8=args.require_int8,
    )
    try:
        result = export_run(Path(args.target), args.dataset, args.out, args.key, options)
    except GateFailed as failed:
        if args.json:
            print(json.dumps(failed.result.to_json(), indent=2))
        raise
    if args.json:
        gate = result.gate.to_json() if result.gate else {"passed": None}
        gate.setdefault("latency_ms", result.manifest["latency_ms"])
        gate["default_precision"] = result.manifest["default_precision"]
        print(json.dumps(gate, indent=2))
    elif result.gate is not None:
        print(result.gate.table())
    print(
        f"bundle: {args.out}  default precision: {result.manifest['default_precision']}",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    if args.bundle is None:
        raise LineqcError(f"lineqc export {BUILD_ENGINE}: which bundle? (a bundle folder)")
    _need(args, "key", "pubkey")
    from .tensorrt_build import build_into_bundle

    record = build_into_bundle(
        args.bundle,
        args.key,
        args.pubkey,
        args.precision,
        args.allow_failed_gate,
        args.workspace_mb,
        args.timing_cache,
    )
    print(
        json.dumps(record.to_json(), indent=2)
        if args.json
        else f"engine: {args.bundle / record.file}"
    )
    return 0
