"""`lineqc bundle verify|info BUNDLE`: check a bundle as a device would, or describe it;
`lineqc bundle schema`: the manifest's JSON Schema (edge/bundle.schema.json).

No torch: this runs anywhere the edge package runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lineqc.edge.bundle import load_bundle
from lineqc.edge.manifest import SCHEMA_FILE, schema_text

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
    schema = sub.add_parser("schema", help="print (or --write) the manifest's JSON Schema")
    schema.add_argument("--write", action="store_true", help=f"write edge/{SCHEMA_FILE.name}")
    schema.set_defaults(func=run_schema)


def run_verify(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, args.pubkey, args.installed_version, args.force)
    print(
        f"{args.bundle}: OK (signature valid, {len(bundle.manifest.files)} files intact, "
        f"model {bundle.manifest.model.name} version {bundle.version})"
    )
    return 0


def run_schema(args: argparse.Namespace) -> int:
    if args.write:
        SCHEMA_FILE.write_text(schema_text())
        print(f"wrote {SCHEMA_FILE}")
    else:
        print(schema_text(), end="")
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
    lines += decision_lines(doc)
    for engine in doc.get("engines", []):
        lines.append(
            f"engine     {engine['file']} (TensorRT {engine['tensorrt_version']}, "
            f"sm {engine['compute_capability']})"
        )
    lines += [f"file       {name}  {digest[:16]}…" for name, digest in doc.get("files", {}).items()]
    lines.append("(not verified: run `lineqc bundle verify BUNDLE --pubkey KEY`)")
    return "\n".join(lines)


def decision_lines(doc: dict[str, Any]) -> list[str]:
    """The decision policy, rounded, each parameter with what it does on the device."""
    policy = doc.get("decision", {})
    on_val = doc.get("evaluation", {}).get("decision_on_val") or {}
    target = on_val.get("target_precision")
    lines = [
        "decision   the device's policy, chosen on the validation split "
        + (f"({on_val['n_val']} images)" if "n_val" in on_val else ""),
        f"  temperature       {_num(policy.get('temperature'))}  logits are divided by it "
        "before the softmax (calibrated probabilities)",
        f"  probability floor {_num(policy.get('prob_floor'))}  a top class below it: review "
        "(low confidence)",
        f"  margin            {_num(policy.get('margin'))}  top two classes closer than it: "
        "review (ambiguous)",
        "  class thresholds  the probability that decides a class"
        + (f" (the lowest that kept {target:.0%} precision on validation)" if target else "")
        + "; below it: review",
    ]
    reject = policy.get("reject_threshold")
    if reject is not None:  # defect-first: the band and the defect classes' thresholds unused
        lines[2:] = [
            f"  reject threshold  {_num(reject)}  1 - p(OK) at or above it: defect, rejected, "
            "whichever defect class leads",
            f"  pass threshold    {_num(policy.get('thresholds', {}).get(doc.get('ok_class')))}"
            "  p(OK) at or above it: OK; in between: review"
            + (
                f" (both the lowest that kept {target:.0%} precision on validation)"
                if target
                else ""
            ),
        ]
    else:
        for name, threshold in policy.get("thresholds", {}).items():
            value = "always review (no threshold reached the precision)"
            lines.append(f"    {name:16s}  {value if threshold is None else _num(threshold)}")
    anomaly = policy.get("anomaly_threshold")
    if anomaly is None:
        lines.append("  anomaly threshold none (the model has no anomaly score, or it is not used)")
    else:
        share = on_val.get("anomaly_share_target")
        lines.append(
            f"  anomaly threshold {anomaly:.4g}  a frame the classes call OK that scores at "
            "least this looks unlike the OK parts the model learnt: review"
            + (f" ({share:.0%} of the OK validation frames reach it)" if share is not None else "")
        )
    if "review_share_val" in on_val:
        lines.append(
            f"  on validation     {on_val['review_share_val']:.0%} of the frames went to review "
            + (
                f"(the band alone {on_val.get('review_share_band_val', 0):.0%}, target "
                f"{on_val['review_share_target']:.0%})"
                if on_val.get("review_share_target") is not None
                else ""
            )
        )
    return lines


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"
