"""Splits: no group straddles two splits, held-out sessions, frozen test, time-forward."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineqc.datasets import manifest as mf
from lineqc.datasets.split import (
    PRODUCTION,
    assign,
    format_report,
    leakage_groups,
    production_ids,
    split_dataset,
)
from lineqc.datasets.stats import dataset_stats
from lineqc.datasets.synth import synthesize


def _record(i: int, label: str, session: str, group: str | None, phash: str, sha: str) -> mf.Record:
    return mf.Record(
        id=f"r{i:04d}",
        path=f"images/{i}.png",
        sha256=sha,
        width=8,
        height=8,
        channels=1,
        label=label,
        source="prop",
        session=session,
        group=group,
        phash=phash,
        captured_at=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
    )


@st.composite
def datasets(draw: st.DrawFn) -> mf.Manifest:
    """Random datasets with parts, exact duplicates and near-duplicate hash clusters."""
    n = draw(st.integers(min_value=1, max_value=80))
    base_hashes = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12))
    records = {}
    for i in range(n):
        base = draw(st.sampled_from(base_hashes))
        flips = draw(st.lists(st.integers(0, 63), max_size=6))
        value = base
        for bit in flips:
            value ^= 1 << bit
        label = draw(st.sampled_from(["ok", "ok", "ok", "scratch", "dent"]))
        session = draw(st.sampled_from(["s0", "s1", "s2"]))
        group = draw(st.one_of(st.none(), st.sampled_from(["p1", "p2", "p3", "p4"])))
        sha = draw(st.sampled_from([f"{i:064x}", "0" * 64]))  # some exact duplicates
        records[f"r{i:04d}"] = _record(i, label, session, group, f"{value:016x}", sha)
    return mf.Manifest(records=records)


def _assert_no_group_straddles(manifest: mf.Manifest) -> None:
    records = list(manifest)
    for ids in leakage_groups(records, max_distance=4):
        splits = {manifest.records[i].split for i in ids}
        assert len(splits) == 1, f"group {ids} straddles {splits}"


@settings(max_examples=60, deadline=None)
@given(
    manifest=datasets(),
    val=st.sampled_from([0.1, 0.2, 0.3]),
    test=st.sampled_from([0.0, 0.15, 0.3]),
    seed=st.integers(0, 3),
    hold_out=st.sampled_from([None, "s1"]),
    production=st.sampled_from([0.0, 0.0, 0.2]),
)
def test_no_leakage_and_frozen_test(
    manifest: mf.Manifest,
    val: float,
    test: float,
    seed: int,
    hold_out: str | None,
    production: float,
) -> None:
    if hold_out and not any(r.session == hold_out for r in manifest):
        hold_out = None
    assign(
        manifest, val=val, test=test, seed=seed, hold_out_session=hold_out, production=production
    )
    _assert_no_group_straddles(manifest)  # held-out production counts as a split of its own
    held = production_ids(manifest)
    assert all(r.split in mf.SPLITS for r in manifest if r.id not in held)
    assert all(r.split is None for r in manifest if r.id in held)
    if hold_out:
        assert all(r.split == "test" for r in manifest if r.session == hold_out)
    frozen = {r.id for r in manifest if r.split == "test"}

    # New images arrive (some near-duplicates of old ones) and the data is split again.
    n_old = len(manifest)
    for j, old in enumerate(list(manifest)[:5]):
        i = n_old + j
        manifest.records[f"r{i:04d}"] = _record(i, "ok", "s2", None, old.phash, f"{i:064x}")
    assign(manifest, val=val, test=test, seed=seed + 1, held=held)
    assert frozen <= {r.id for r in manifest if r.split == "test"}
    assert production_ids(manifest) == held  # held out stays held out, nothing added
    for ids in leakage_groups([r for r in manifest if r.id not in held], max_distance=4):
        assert len({manifest.records[i].split for i in ids}) == 1


def test_stratified_shares_on_synthetic_data(tmp_path: Path) -> None:
    synthesize(tmp_path, 400, seed=2, size=48, quiet=True)
    report = split_dataset(tmp_path, val=0.2, test=0.2, seed=0)
    totals = report.totals()
    per_class = Counter(r.label for r in mf.load(tmp_path))
    for cls, n in per_class.items():
        for split, share in (("val", 0.2), ("test", 0.2)):
            # groups of re-shot parts make exact shares impossible; stay close
            assert abs(totals[split].get(cls, 0) - share * n) <= max(3, 0.1 * n), (cls, split)


def test_same_seed_same_split(tmp_path: Path) -> None:
    synthesize(tmp_path, 80, seed=4, size=48, quiet=True)
    split_dataset(tmp_path, seed=5, unfreeze_test=True)
    first = {r.id: r.split for r in mf.load(tmp_path)}
    split_dataset(tmp_path, seed=5, unfreeze_test=True)
    assert {r.id: r.split for r in mf.load(tmp_path)} == first


def test_time_forward_puts_the_newest_in_test(tmp_path: Path) -> None:
    synthesize(tmp_path, 100, seed=6, size=48, quiet=True)
    split_dataset(tmp_path, val=0.2, test=0.2, time_forward=True)
    records = list(mf.load(tmp_path))
    newest_train = max(str(r.captured_at) for r in records if r.split == "train")
    oldest_test = min(str(r.captured_at) for r in records if r.split == "test")
    oldest_val = min(str(r.captured_at) for r in records if r.split == "val")
    assert newest_train < oldest_val <= oldest_test or newest_train < oldest_test
    assert Counter(r.split for r in records)["test"] >= 15


def test_split_errors_name_the_problem(tmp_path: Path) -> None:
    synthesize(tmp_path, 20, seed=1, size=48, quiet=True)
    with pytest.raises(mf.DatasetError, match="session 'nope' has no labelled images"):
        split_dataset(tmp_path, hold_out_session="nope")
    with pytest.raises(mf.DatasetError, match="must be >= 0 and sum below 1"):
        split_dataset(tmp_path, val=0.6, test=0.5)
    with pytest.raises(mf.DatasetError, match="no images"):
        split_dataset(tmp_path / "empty")


def test_production_holds_out_fresh_parts_and_keeps_them_out(tmp_path: Path) -> None:
    synthesize(tmp_path, 400, seed=2, size=48, quiet=True)
    report = split_dataset(tmp_path, val=0.2, test=0.2, production=0.1, seed=0)
    manifest = mf.load(tmp_path)
    held = production_ids(manifest)
    per_class = Counter(r.label for r in manifest)
    held_per_class = Counter(manifest.records[i].label for i in held)
    for cls, n in per_class.items():  # stratified by class, whole parts
        assert abs(held_per_class[cls] - 0.1 * n) <= max(3, 0.1 * n), cls
    assert report.totals()[PRODUCTION] == dict(held_per_class)
    assert all(manifest.records[i].split is None for i in held)
    parts = {(r.source, r.group) for r in manifest if r.id in held}
    assert not any((r.source, r.group) in parts for r in manifest if r.id not in held)
    assert PRODUCTION in format_report(report) and "new production" in format_report(report)
    stats = dataset_stats(tmp_path)
    assert stats["splits"][PRODUCTION] == dict(sorted(held_per_class.items()))
    test = {r.id for r in manifest if r.split == "test"}
    assert abs(len(test) - 0.2 * len(manifest)) <= 0.05 * len(manifest)  # test keeps its share

    # A re-split, with or without --production, keeps both the held-out rows and test.
    split_dataset(tmp_path, seed=3)
    again = mf.load(tmp_path)
    assert production_ids(again) == held
    assert test <= {r.id for r in again if r.split == "test"}  # frozen (re-splits may add)
    split_dataset(tmp_path, production=0.3, seed=3)  # only fresh parts: none are left
    assert production_ids(mf.load(tmp_path)) == held


def test_production_errors(tmp_path: Path) -> None:
    synthesize(tmp_path, 20, seed=1, size=48, quiet=True)
    with pytest.raises(mf.DatasetError, match="--production with --time-forward"):
        split_dataset(tmp_path, production=0.1, time_forward=True)
    with pytest.raises(mf.DatasetError, match="must be >= 0 and sum below 1"):
        split_dataset(tmp_path, val=0.4, test=0.4, production=0.2)
