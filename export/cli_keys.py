"""`lineqc keys generate --out PREFIX`: an Ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from lineqc.edge.signing import generate_keys


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write PREFIX.key (private, 0600) and PREFIX.pub")
    gen.add_argument("--out", type=Path, required=True, metavar="PREFIX")
    gen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    private, public = generate_keys(args.out, overwrite=args.force)
    print(f"private key: {private} (keep it secret)\npublic key:  {public} (give it to devices)")
    return 0
