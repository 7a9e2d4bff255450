"""`lineqc retrain`: the monthly job (labels in, challenger vs champion, maybe a new bundle)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lineqc.train.config import add_overrides_argument

from .checks import MIN_SUPPORT


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (manifest)")
    parser.add_argument(
        "--champion",
        type=Path,
        required=True,
        metavar="RUN_OR_BUNDLE",
        help="the model in service: its training run folder, or its bundle (whose source run "
        "is looked up by run id, see --runs)",
    )
    parser.add_argument("--out", type=Path, required=True, help="new folder for this retrain")
    parser.add_argument(
        "--db",
        default=os.environ.get("LINEQC_REVIEW_DB"),
        help="review database (SQLAlchemy URL or SQLite path; default: $LINEQC_REVIEW_DB): its "
        "agreed and adjudicated labels are exported into the dataset first; without it the "
        "dataset is used as it is",
    )
    parser.add_argument(
        "--images",
        default=os.environ.get("LINEQC_REVIEW_IMAGES"),
        help="the review store's image folder (default: beside an SQLite file)",
    )
    parser.add_argument(
        "--key", type=Path, help="Ed25519 private key (PREFIX.key): sign the new bundle"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="train a challenger even with no new training rows since the champion, and "
        "export it even if it is not promoted (never one identical to the champion)",
    )
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="export without the INT8 gate: INT8 is written but FP32 stays the default "
        "precision (as `lineqc export --no-gate`)",
    )
    add_overrides_argument(
        parser, "override a key of the champion's config for the challenger (repeatable)"
    )
    parser.add_argument(
        "--recent-days",
        type=float,
        default=30.0,
        metavar="N",
        help="the recent reviewed frames slice: captured in the last N days (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="a check is worse when the whole 95%% interval of the challenger's difference "
        "lies below minus this (default: %(default)s)",
    )
    parser.add_argument(
        "--min-support",
        type=int,
        default=MIN_SUPPORT,
        metavar="N",
        help="images a check must rest on to be judged (for a class's recall: images of that "
        "class; default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="where a bundle's source run folder is looked up (repeatable; default: beside "
        "the bundle)",
    )
    parser.add_argument("--device", default="cpu", help="evaluation device (default: cpu)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="evaluation batch size (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lineqc.errors import LineqcError

    from .job import RetrainOptions, retrain, side_by_side_text

    if args.min_support < 1:
        raise LineqcError(f"--min-support {args.min_support}: must be 1 or more")
    if args.tolerance < 0:
        raise LineqcError(f"--tolerance {args.tolerance}: must be 0 or more")
    if args.recent_days <= 0:
        raise LineqcError(f"--recent-days {args.recent_days}: must be more than 0")
    options = RetrainOptions(
        db=args.db,
        images=args.images,
        force=args.force,
        key=args.key,
        gate=args.gate,
        overrides=list(args.overrides),
        recent_days=args.recent_days,
        tolerance=args.tolerance,
        min_support=args.min_support,
        runs=list(args.runs),
        device=args.device,
        batch_size=args.batch_size,
    )
    result = retrain(args.dataset, args.champion, args.out, options)
    if args.json:
        print(json.dumps(result.comparison, indent=2))
        return result.exit_code
    print(result.decision.verdict)
    for reason in result.decision.reasons:
        print(f"  {reason}")
    if result.comparison["slices"]:
        print(side_by_side_text(result.comparison))
    bundle = result.comparison["bundle"]
    print(f"bundle: {bundle['path'] if bundle['exported'] else bundle['reason']}")
    print(f"report: {args.out / 'comparison.md'}")
    return result.exit_code
