"""`lineqc bundle verify|info BUNDLE`: check a bundle as a device would, or describe it.

No torch: this runs anywhere the edge package runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lineqc.edge.bundle import load_bundle

from .bundle_writer import read_manifest_unverified


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="signature, file hashes, schema, external data")
    verify.add_argument("bundle", type=Path, help="bundle folder or .tar")
    verify.add_argument("--pubkey", type=Path, required=True, help="PREFIX.pub")
    verify.add_argument("--installed-version", help="refuse an older bundle than this")
    verify.add_argument("--force", action="store_true", help="accept an older bundle")
    verify.set_defaults(func=run_verify)
    info = sub.add_parser("info", help="what a bundle holds (not a verification)")
    info.add_argument("bundle", type=Path, help="bundle folder or .tar")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(func=run_info)


def run_verify(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, args.pubkey, args.installed_version, args.force)
    print(
        f"{args.bundle}: OK (signature valid, {len(bundle.manifest['files'])} files intact, "
        f"model {bundle.manifest['model']['name']} version {bundle.version})"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    doc = read_manifest_unverified(args.bundle)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(summary(doc))
    return 0


def summary(doc: dict[str, Any]) -> str:
    model = doc.get("model", {})
    lines = [
        f"model      {model.get('name')} version {model.get('version')}"
        f" (run {model.get('run_id')})",
        f"schema     {doc.get('schema_version')}   created {doc.get('created_at')}",
        f"classes    {', '.join(doc.get('classes', []))} (OK: {doc.get('ok_class')})",
        f"input      {doc.get('input', {}).get('channels')}x{doc.get('input', {}).get('height')}"
        f"x{doc.get('input', {}).get('width')}",
        f"default    {doc.get('default_precision')}",
    ]
    for precision, lat in doc.get("latency_ms", {}).items():
        lines.append(f"latency    {precision:5s} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms")
    decision = doc.get("decision", {})
    lines.append(
        f"decision   T={decision.get('temperature')} floor={decision.get('prob_floor')} "
        f"margin={decision.get('margin')}"
    )
    for name, threshold in decision.get("thresholds", {}).items():
        lines.append(f"  threshold {name:16s} {'review' if threshold is None else threshold}")
    for engine in doc.get("engines", []):
        lines.append(
            f"engine     {engine['file']} (TensorRT {engine['tensorrt_version']}, "
            f"sm {engine['compute_capability']})"
        )
    lines += [f"file       {name}  {digest[:16]}…" for name, digest in doc.get("files", {}).items()]
    lines.append("(not verified: run `lineqc bundle verify BUNDLE --pubkey KEY`)")
    return "\n".join(lines)
