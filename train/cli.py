"""`lineqc train`: train a timm defect classifier into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import TrainConfigError, add_overrides_argument, load_config


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="training config YAML (train/configs/)")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder (manifest)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to create")
    add_overrides_argument(parser, "override a config key, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run in --out from its last checkpoint; a finished run is "
        "finished again, to score it with other --set flip_views or defect_score",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = args.config
    if config is None:
        if not args.resume:
            raise TrainConfigError("--config is required (except with --resume)")
        config = args.out / "config.yaml"
    cfg = load_config(config, args.overrides)
    from .loop import train  # torch and timm load here, after the config is known to be good

    metrics = train(cfg, args.dataset, args.out, resume=args.resume)
    if metrics:
        from .report import headline_text

        print(f"run folder: {args.out}  (evaluated on split '{metrics['split']}')")
        print(headline_text(metrics))
    return 0
