"""The INT8 calibration set: drawn from the training split, stratified by class and session.

Each (label, capture session) stratum gets a share proportional to its size (largest
remainder), and at least one image while the budget allows, so a rare defect or an unusual
lighting session still shapes the activation ranges. The same seed gives the same set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from lineqc.datasets.manifest import Record


def stratum(record: Record) -> tuple[str, str]:
    return (record.label or "", record.session or "")


def allocate(sizes: dict[tuple[str, str], int], n: int) -> dict[tuple[str, str], int]:
    """How many images each stratum gives to a set of ``n`` (n < total)."""
    keys = sorted(sizes)
    total = sum(sizes.values())
    # one each first (largest strata first when even that does not fit), then proportional
    base = dict.fromkeys(keys, 0)
    for k in sorted(keys, key=lambda k: (-sizes[k], k))[: min(n, len(keys))]:
        base[k] = 1
    left = n - sum(base.values())
    room = {k: sizes[k] - base[k] for k in keys}
    room_total = sum(room.values())
    if left > 0 and room_total > 0:
        exact = {k: left * room[k] / room_total for k in keys}
        for k in keys:
            base[k] += int(exact[k])
        rest = left - sum(int(exact[k]) for k in keys)
        by_remainder = sorted(keys, key=lambda k: (-(exact[k] - int(exact[k])), k))
        for k in by_remainder[:rest]:
            base[k] += 1
    assert sum(base.values()) == min(n, total)
    return base


def calibration_records(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    """At most ``n`` records, stratified by (label, session), reproducible by ``seed``."""
    if n <= 0:
        raise ValueError(f"the calibration set needs at least one image, not {n}")
    ordered = sorted(records, key=lambda r: r.id)
    if n >= len(ordered):
        return ordered
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in ordered:
        groups[stratum(r)].append(r)
    counts = allocate({k: len(v) for k, v in groups.items()}, n)
    rng = np.random.default_rng(seed)
    chosen: list[Record] = []
    for key in sorted(groups):
        members = groups[key]
        picks = rng.permutation(len(members))[: counts[key]]
        chosen.extend(members[i] for i in sorted(picks))
    return sorted(chosen, key=lambda r: r.id)
