"""The calibration set: stratified by class and session, reproducible by seed."""

from __future__ import annotations

from collections import Counter

from lineqc.datasets.manifest import Record
from lineqc.export.calibration_set import allocate, calibration_records, stratum


def rec(i: int, label: str, session: str) -> Record:
    return Record(
        id=f"{i:04d}",
        path=f"{i}.png",
        sha256="",
        width=8,
        height=8,
        channels=1,
        label=label,
        source="t",
        session=session,
        split="train",
    )


RECORDS = (
    [rec(i, "ok", "s1") for i in range(600)]
    + [rec(1000 + i, "ok", "s2") for i in range(200)]
    + [rec(2000 + i, "crack", "s1") for i in range(30)]
    + [rec(3000 + i, "crack", "s2") for i in range(3)]
    + [rec(4000, "blowhole", "s3")]
)


def test_allocation_is_proportional_and_keeps_rare_strata() -> None:
    counts = Counter(stratum(r) for r in calibration_records(RECORDS, 100, seed=0))
    assert sum(counts.values()) == 100
    assert counts[("blowhole", "s3")] == 1  # a single rare image still gets in
    assert counts[("crack", "s2")] >= 1
    assert counts[("ok", "s1")] > counts[("ok", "s2")] > counts[("crack", "s1")]
    assert allocate({("a", ""): 3, ("b", ""): 1}, 2) == {("a", ""): 1, ("b", ""): 1}


def test_reproducible_by_seed() -> None:
    a = [r.id for r in calibration_records(RECORDS, 64, seed=1)]
    assert a == [r.id for r in calibration_records(list(reversed(RECORDS)), 64, seed=1)]
    assert a != [r.id for r in calibration_records(RECORDS, 64, seed=2)]
    assert len(calibration_records(RECORDS[:10], 64, seed=1)) == 10  # fewer than asked: all
