"""Dataset statistics: counts per class, split and session, duplicates and rejects."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from . import manifest as mf
from .duplicates import DEFAULT_MAX_DISTANCE, duplicate_groups
from .split import PRODUCTION, UNASSIGNED, production_ids

UNLABELLED = "(unlabelled)"
NO_SESSION = "(no session)"  # frames from a device (reviewed labels) carry no session


def dataset_stats(root: Path | str, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, Any]:
    manifest = mf.load(root)
    records = list(manifest)
    exact, near = duplicate_groups([(r.id, r.sha256, r.phash) for r in records], max_distance)
    held = production_ids(manifest)
    splits: dict[str, Counter[str]] = {}
    for r in records:
        split = PRODUCTION if r.id in held else r.split or UNASSIGNED
        splits.setdefault(split, Counter())[r.label or UNLABELLED] += 1
    reasons = Counter(v["reason"].split(":", 1)[0] for v in manifest.rejects.values())
    return {
        "images": len(records),
        "classes": dict(sorted(Counter(r.label or UNLABELLED for r in records).items())),
        "ok_class": manifest.ok_class,
        "sessions": dict(sorted(Counter(r.session or NO_SESSION for r in records).items())),
        "splits": {s: dict(sorted(c.items())) for s, c in sorted(splits.items())},
        "sources": dict(sorted(Counter(r.source for r in records).items())),
        "rejected": len(manifest.rejects),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "duplicate_groups": len(near),  # near groups contain the exact ones
        "exact_duplicate_groups": len(exact),
        "images_in_duplicate_groups": sum(len(g) for g in near),
        "split_params": manifest.split_params,
        "manifest_sha256": mf.manifest_hash(root),
    }


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"images: {stats['images']}  (ok class: {stats['ok_class']})",
        "classes: " + ", ".join(f"{c} {n}" for c, n in stats["classes"].items()),
        "sessions: " + ", ".join(f"{s} {n}" for s, n in stats["sessions"].items()),
    ]
    for split, by_class in stats["splits"].items():
        total = sum(by_class.values())
        parts = ", ".join(f"{c} {n}" for c, n in by_class.items())
        lines.append(f"split {split} ({total}): {parts}")
    lines.append(
        f"rejected: {stats['rejected']} "
        + (
            f"({', '.join(f'{r} {n}' for r, n in stats['rejected_by_reason'].items())})"
            if stats["rejected"]
            else ""
        )
    )
    lines.append(
        f"duplicates: {stats['duplicate_groups']} group(s) holding "
        f"{stats['images_in_duplicate_groups']} images; {stats['exact_duplicate_groups']} exact"
    )
    lines.append(f"manifest sha256: {stats['manifest_sha256']}")
    return "\n".join(lines)
