"""`lineqc eval`: evaluate a trained run on a split of any dataset in the manifest format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder (or a .pt checkpoint)")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (manifest)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split to evaluate (default: test)",
    )
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument(
        "--out", type=Path, help="also write metrics.json, report.html, model_card.md here"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import checkpoint, report
    from .evaluate import evaluate_run, predictions_csv

    result = evaluate_run(args.run, args.dataset, args.split, args.batch_size, args.device)
    metrics = result.metrics
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = checkpoint.load_meta(checkpoint.resolve(args.run))
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (args.out / "predictions.csv").write_text(
            predictions_csv(result, metrics["classes"], metrics["temperature"])
        )
        run_dir = checkpoint.resolve(args.run).parent
        info_path = run_dir / "run.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        report.write_all(args.out, result, [], info, meta)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.run} on {args.dataset} split '{args.split}'")
        print(report.headline_text(metrics))
    return 0
