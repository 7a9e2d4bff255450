"""The `lineqc` command: one subcommand per stage.

Each stage registers its own subcommands from its own `cli` module, imported only when that
stage is asked for, so `lineqc edge ...` never imports torch and `lineqc --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LineqcError

# subcommand -> (module that registers it, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "data": ("lineqc.datasets.cli", "import, validate, split and inspect datasets"),
    "edge": ("lineqc.edge.cli", "the device runtime"),
    "train": ("lineqc.train.cli", "train a defect classifier (timm) into a run folder"),
    "eval": ("lineqc.train.cli_eval", "evaluate a trained run on a dataset split"),
    "export": ("lineqc.export.cli", "export a run to a signed bundle (ONNX, gated INT8, engines)"),
    "keys": ("lineqc.export.cli_keys", "generate the Ed25519 key pair that signs bundles"),
    "bundle": ("lineqc.export.cli_bundle", "verify or describe a model bundle"),
    "review": ("lineqc.review.cli", "collect flagged frames, the inspectors' web app, labels out"),
    "retrain": ("lineqc.retrain.cli", "the monthly job: labels in, challenger vs champion"),
    "fleet": ("lineqc.review.fleet", "publish bundles, deploy them to devices, rollout status"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineqc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lineqc {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the stage that runs
            importlib.import_module(module).register(stage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    try:
        return int(args.func(args) or 0)
    except LineqcError as exc:
        print(f"lineqc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
