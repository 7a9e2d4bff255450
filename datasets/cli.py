"""`lineqc data ...`: import, split, synthesize and inspect datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .duplicates import DEFAULT_MAX_DISTANCE
from .importers import DEFAULT_OK_CLASS, FORMATS
from .ingest import ingest
from .public import LOCAL_COPIES, MAGNETIC_TILE_GIT
from .split import format_report, split_dataset
from .stats import dataset_stats, format_stats
from .synth import synthesize
from .validate import Limits


def _print_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def cmd_import(args: argparse.Namespace) -> int:
    importer = FORMATS[args.format]
    options: dict[str, Any] = {}
    if args.source:
        options["source"] = args.source
    if args.format == "imagefolder":
        options.update(session=args.session, license=args.license, part_pattern=args.part_pattern)
    candidates = importer(Path(args.src), **options)
    limits = Limits(max_bytes=args.max_mb * 1024 * 1024, max_pixels=args.max_megapixels * 10**6)
    report = ingest(
        args.dataset,
        candidates,
        import_name=f"{args.format} {args.src}",
        ok_class=args.ok_class or DEFAULT_OK_CLASS.get(args.format),
        limits=limits,
        total=len(candidates),
    )
    if args.json:
        _print_json(report.to_json())
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    report = split_dataset(
        args.dataset,
        val=args.val,
        test=args.test,
        seed=args.seed,
        hold_out_session=args.hold_out_session,
        time_forward=args.time_forward,
        unfreeze_test=args.unfreeze_test,
        max_distance=args.near_distance,
        production=args.production,
    )
    if args.json:
        _print_json(report.to_json())
    else:
        print(format_report(report))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    report = synthesize(args.dataset, args.n, args.seed, size=args.size)
    if args.json:
        _print_json(report.to_json())
    return 0


def cmd_find_magnetic_tile(args: argparse.Namespace) -> int:
    from .public import find_magnetic_tile

    folder, how = find_magnetic_tile(
        args.src,
        tuple(args.copy or LOCAL_COPIES),
        fetch_to=None if args.no_fetch else args.fetch_to,
        url=args.url,
    )
    if folder is None:
        print(how, file=sys.stderr)
        return 3
    print(f"magnetic-tile images: {how}", file=sys.stderr)
    print(folder)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    stats = dataset_stats(args.dataset)
    if args.json:
        _print_json(stats)
    else:
        print(format_stats(stats))
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("import", help="validate and import images into a dataset folder")
    p.add_argument("src", help="the source folder")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--dataset", required=True, type=Path, help="the dataset folder to import into")
    p.add_argument("--ok-class", help="the class that means 'no defect'")
    p.add_argument("--source", help="provenance: source name (default: the folder's name)")
    p.add_argument("--session", help="imagefolder: capture session / lighting id for all images")
    p.add_argument("--license", help="imagefolder: license or consent note")
    p.add_argument(
        "--part-pattern",
        metavar="REGEX",
        help="imagefolder: the part id in each image's path below its class folder (group "
        "'part', else the first group), e.g. '^([^/]+)/' for a folder per part; images of "
        "one part never straddle splits (magnetic-tile derives it from frame numbers)",
    )
    p.add_argument("--max-mb", type=int, default=64, help="largest accepted file (default: 64)")
    p.add_argument("--max-megapixels", type=int, default=40, help="largest image (default: 40)")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("split", help="assign leakage-safe train/val/test splits")
    p.add_argument("dataset", type=Path)
    p.add_argument(
        "--val",
        type=float,
        default=0.15,
        help="validation share, whole parts at a time (default: %(default)s)",
    )
    p.add_argument(
        "--test",
        type=float,
        default=0.20,
        help="test share, whole parts at a time; 0 with --hold-out-session (default: %(default)s)",
    )
    p.add_argument(
        "--production",
        type=float,
        default=0.0,
        metavar="F",
        help="share of parts held out as the line's new production: in no split, never trained "
        "or judged on, replayed through a device so that inspectors' labels of those frames "
        "join training; only parts in no split yet; held out before stays held out "
        "(default: %(default)s)",
    )
    p.add_argument("--hold-out-session", metavar="K", help="put this whole session in test")
    p.add_argument(
        "--time-forward",
        action="store_true",
        help="oldest images train, newest test (needs captured_at)",
    )
    p.add_argument(
        "--unfreeze-test",
        action="store_true",
        help="let images leave the test split (breaks comparability with old runs)",
    )
    p.add_argument(
        "--near-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        metavar="BITS",
        help="perceptual-hash distance that makes images near duplicates and keeps "
        "them in one split; 0: identical hash (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="orders equal-sized parts (default: 0)")
    p.add_argument("--json", action="store_true", help="print the split report as JSON")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("synth", help="generate a seeded synthetic metal-part dataset")
    p.add_argument("dataset", type=Path)
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "find-magnetic-tile",
        help="print the folder of the public magnetic-tile images: --src, else a local copy, "
        "else cloned when online; exit 3 saying how to get them when none",
    )
    p.add_argument("--src", type=Path, help="the folder the user names (MT_SRC)")
    p.add_argument(
        "--copy",
        type=Path,
        action="append",
        help="a local copy to look for, repeatable (default: "
        + ", ".join(map(str, LOCAL_COPIES))
        + ")",
    )
    p.add_argument(
        "--fetch-to",
        type=Path,
        default=LOCAL_COPIES[0],
        help="where to clone the images when no copy is found (default: %(default)s)",
    )
    p.add_argument("--no-fetch", action="store_true", help="never download")
    p.add_argument(
        "--url", default=MAGNETIC_TILE_GIT, help="the repository to clone (default: %(default)s)"
    )
    p.set_defaults(func=cmd_find_magnetic_tile)

    p = sub.add_parser("stats", help="counts per class, split and session; duplicates; rejects")
    p.add_argument("dataset", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stats)
