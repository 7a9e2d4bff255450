"""Leakage-safe train/val/test splits.

Images that must not be separated form a group: the same physical part, exact and near
duplicates, and (with ``hold_out_session``) every image of that session together with
anything grouped with it. A group goes to one split whole. The test split is frozen: an
image once in test stays in test across re-imports and re-splits, and anything grouped
with it joins it there.

A share of parts can be held out as the line's *new production* (``production``): in no
split, listed in the split parameters, so a device can replay them and inspectors' labels
of those frames join training, while the images themselves stay the answer key that no
model trains or is judged on. Held-out rows stay held out across re-splits.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import manifest as mf
from .duplicates import DEFAULT_MAX_DISTANCE, UnionFind, duplicate_groups
from .ingest import now_iso

UNASSIGNED = "unassigned"
PRODUCTION = "production"  # the held-out share's name in reports (its rows have no split)


def production_ids(manifest: mf.Manifest) -> set[str]:
    """The rows held out as new production by an earlier split (still in no split)."""
    ids = manifest.split_params.get("production_ids") or []
    return {i for i in ids if i in manifest.records and manifest.records[i].split is None}


def _fresh_part(group: list[mf.Record], split: str) -> bool:
    """Only parts never in a split, none of them labelled by an inspector, can become new
    production: a model may have trained on anything split before."""
    return split != PRODUCTION or all(
        r.split is None and not r.label_source.startswith("inspector:") for r in group
    )


@dataclass
class SplitReport:
    counts: dict[str, dict[str, dict[str, int]]]  # class -> split -> session -> images
    groups: int
    frozen_test: int  # images that were in test before and stayed there
    pulled_into_test: int  # images placed in test only because their group was there
    unlabelled: int
    params: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, dict[str, int]]:
        """split -> class -> images."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for cls, by_split in self.counts.items():
            for split, by_session in by_split.items():
                out[split][cls] = sum(by_session.values())
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "splits": self.totals(),
            "groups": self.groups,
            "frozen_test": self.frozen_test,
            "pulled_into_test": self.pulled_into_test,
            "unlabelled": self.unlabelled,
            "params": self.params,
        }


def leakage_groups(records: list[mf.Record], max_distance: int) -> list[list[str]]:
    """Ids that must share a split: same part, exact or near duplicates."""
    uf = UnionFind(r.id for r in records)
    by_part: dict[tuple[str, str], str] = {}
    for r in records:
        if r.group is not None:
            first = by_part.setdefault((r.source, r.group), r.id)
            uf.union(first, r.id)
    _, near = duplicate_groups([(r.id, r.sha256, r.phash) for r in records], max_distance)
    for members in near:
        for other in members[1:]:
            uf.union(members[0], other)
    return sorted(uf.groups().values())


def _stratified(
    groups: list[list[mf.Record]],
    targets: dict[str, Counter[str]],
    counts: dict[str, Counter[str]],
    may_go: Callable[[list[mf.Record], str], bool] | None = None,
) -> dict[str, str]:
    """Greedy: biggest groups first, each to the split (a key of ``targets``, one that
    ``may_go`` allows) whose targets for its classes are least filled. Returns record id ->
    split."""
    out = {}
    for group in groups:
        options = [s for s in targets if may_go is None or may_go(group, s)]
        classes = Counter(r.label for r in group if r.label is not None)

        def fill(split: str, classes: Counter[str] = classes) -> float:
            score = 0.0
            for cls, n in classes.items():
                target = targets[split][cls]
                score += n * ((target - counts[split][cls]) / target if target > 0 else -1e9)
            return score

        best = max(options, key=fill)  # ties go to the first: train
        counts[best].update(classes)
        out.update({r.id: best for r in group})
    return out


def _time_forward(
    groups: list[list[mf.Record]], targets: dict[str, Counter[str]], counts: dict[str, Counter[str]]
) -> dict[str, str]:
    """Oldest groups train, then val, newest test: the model never sees the future."""
    missing = [r.id for g in groups for r in g if not r.captured_at]
    if missing:
        raise mf.DatasetError(
            f"time-forward split needs captured_at on every image; {len(missing)} lack it "
            f"(e.g. {', '.join(missing[:3])})"
        )
    ordered = sorted(groups, key=lambda g: min(str(r.captured_at) for r in g))
    quota = {s: sum(targets[s].values()) - sum(counts[s].values()) for s in mf.SPLITS}
    out = {}
    split_iter = iter(mf.SPLITS)
    split = next(split_iter)
    for group in ordered:
        while quota[split] <= 0 and split != "test":
            split = next(split_iter)
        quota[split] -= len(group)
        out.update({r.id: split for r in group})
    return out


def assign(
    manifest: mf.Manifest,
    *,
    val: float = 0.15,
    test: float = 0.20,
    seed: int = 0,
    hold_out_session: str | None = None,
    time_forward: bool = False,
    unfreeze_test: bool = False,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    production: float = 0.0,
    held: Collection[str] = (),
) -> SplitReport:
    """Assign every labelled record of ``manifest`` to a split, in place.

    ``production``: the share of labelled images to hold out as new production (whole
    fresh parts, stratified by class); ``held``: ids held out before, which stay out (see
    ``production_ids``; the caller passes them, so a view of the dataset can ignore them).
    """
    if not all(0 <= f < 1 for f in (val, test, production)) or val + test + production >= 1:
        raise mf.DatasetError(
            f"fractions val={val}, test={test}, production={production} must be >= 0 and sum "
            "below 1"
        )
    if production and time_forward:
        raise mf.DatasetError(
            "--production with --time-forward: the newest parts are the test set there; hold "
            "out production with the default split"
        )
    records = [r for r in manifest if r.label is not None]
    if hold_out_session is not None and not any(r.session == hold_out_session for r in records):
        sessions = sorted({str(r.session) for r in records})
        raise mf.DatasetError(
            f"session {hold_out_session!r} has no labelled images; sessions: {', '.join(sessions)}"
        )
    by_id = {r.id: r for r in records}
    held_ids = {i for i in held if i in by_id and by_id[i].split is None}
    groups = [
        kept
        for ids in leakage_groups(records, max_distance)
        if (kept := [by_id[i] for i in ids if i not in held_ids])
    ]

    was_test = {r.id for r in records if r.split == "test" and not unfreeze_test}
    forced: list[list[mf.Record]] = []
    free: list[list[mf.Record]] = []
    for group in groups:
        held_out = any(r.session == hold_out_session for r in group) if hold_out_session else False
        (forced if held_out or any(r.id in was_test for r in group) else free).append(group)

    per_class = Counter(r.label for r in records if r.label is not None)
    test_share = 0.0 if hold_out_session else test  # the held-out session is the test set
    targets, counts = _targets(per_class, val, test_share, production, records, held_ids)
    for group in forced:
        counts["test"].update(r.label for r in group if r.label is not None)

    random.Random(seed).shuffle(free)
    free.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    if time_forward:
        chosen = _time_forward(free, targets, counts)
    else:
        chosen = _stratified(free, targets, counts, _fresh_part)
    pulled = 0
    for group in forced:
        for r in group:
            chosen[r.id] = "test"
            in_session = hold_out_session is not None and r.session == hold_out_session
            pulled += not (in_session or r.id in was_test)

    held_ids |= {i for i, split in chosen.items() if split == PRODUCTION}
    for r in manifest:
        split = chosen.get(r.id)  # unlabelled and held-out images get no split
        r.split = None if split == PRODUCTION else split
    params: dict[str, Any] = {
        "val": val,
        "test": test,
        "seed": seed,
        "hold_out_session": hold_out_session,
        "time_forward": time_forward,
        "max_distance": max_distance,
        "at": now_iso(),
    }
    if held_ids:
        params["production"] = len(held_ids) / len(records)
        params["production_ids"] = sorted(held_ids)
    manifest.split_params = params
    counts_out: dict[str, dict[str, dict[str, int]]] = {}
    for r in records:
        by_split = counts_out.setdefault(str(r.label), {})
        by_session = by_split.setdefault(PRODUCTION if r.id in held_ids else str(r.split), {})
        by_session[str(r.session)] = by_session.get(str(r.session), 0) + 1
    return SplitReport(
        counts=counts_out,
        groups=len(groups),
        frozen_test=len(was_test),
        pulled_into_test=pulled,
        unlabelled=len(manifest) - len(records),
        params=params,
    )


def _targets(
    per_class: Counter[str],
    val: float,
    test: float,
    production: float,
    records: list[mf.Record],
    held: set[str],
) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    """Per split and class, the images wanted and those already placed (the held-out
    production rows). Production is a target only when more of it is asked for than is
    held out already; held rows otherwise just shrink train's share."""
    held_share = len(held) / len(records) if records else 0.0
    shares = {"train": 1.0 - val - test - max(production, held_share), "val": val, "test": test}
    if production > held_share:
        shares[PRODUCTION] = production
    targets = {
        s: Counter({c: share * n for c, n in per_class.items()}) for s, share in shares.items()
    }
    counts: dict[str, Counter[str]] = {s: Counter() for s in shares}
    counts.setdefault(PRODUCTION, Counter()).update(str(r.label) for r in records if r.id in held)
    return targets, counts


def part_folds(
    manifest: mf.Manifest, k: int, seed: int = 0, max_distance: int = DEFAULT_MAX_DISTANCE
) -> dict[str, int]:
    """Fold index (0..k-1) of every labelled record for k-fold cross-validation.

    Folds are built like splits: leakage groups (part, exact and near duplicates) whole,
    stratified by class, so each fold is a test set of parts the other folds never saw.
    """
    if k < 2:
        raise mf.DatasetError(f"cross-validation needs at least 2 folds, not {k}")
    records = [r for r in manifest if r.label is not None]
    by_id = {r.id: r for r in records}
    groups = [[by_id[i] for i in ids] for ids in leakage_groups(records, max_distance)]
    if len(groups) < k:
        raise mf.DatasetError(f"{len(groups)} part group(s) cannot fill {k} folds")
    per_class = Counter(str(r.label) for r in records)
    names = [str(f) for f in range(k)]
    targets = {f: Counter({c: n / k for c, n in per_class.items()}) for f in names}
    counts: dict[str, Counter[str]] = {f: Counter() for f in names}
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)
    return {rid: int(fold) for rid, fold in _stratified(groups, targets, counts).items()}


@dataclass
class Placement:
    """Where ``place_new`` put rows: id -> split, and the rows it kept out of every split."""

    placed: dict[str, str] = field(default_factory=dict)
    kept_out: dict[str, str] = field(default_factory=dict)  # id -> why


def place_new(manifest: mf.Manifest, ids: set[str], seed: int = 0) -> Placement:
    """Put the unsplit labelled rows among ``ids`` into train or val, in place; no other row
    moves (a re-split would move existing train and val rows).

    Test is never chosen. A row grouped (part, exact or near duplicate) with a test image
    stays out of every split: test is frozen, and training on it would leak the test image.
    A row grouped with train or val rows joins that split; one grouped with both stays out.
    Other groups are placed whole, stratified by class, with val's share of the non-test
    images from the dataset's last split parameters.
    """
    params = manifest.split_params
    test = 0.0 if params.get("hold_out_session") else float(params.get("test", 0.20))
    held = float(params.get("production", 0.0))  # the held-out share is in neither
    val_share = float(params.get("val", 0.15)) / (1.0 - test - held)
    records = [r for r in manifest if r.label is not None]
    by_id = {r.id: r for r in records}
    new = {i for i in ids if i in by_id and by_id[i].split is None}
    out = Placement()
    free: list[list[mf.Record]] = []
    max_distance = int(params.get("max_distance", DEFAULT_MAX_DISTANCE))
    for members in leakage_groups(records, max_distance):
        group = [by_id[i] for i in members]
        mine = [r for r in group if r.id in new]
        if not mine:
            continue
        placed = {r.split for r in group if r.split is not None}
        if "test" in placed or placed == {"train", "val"}:
            others = ", ".join(sorted(f"{r.id} ({r.split})" for r in group if r.split))
            out.kept_out.update({r.id: f"grouped with {others}" for r in mine})
        elif placed:
            out.placed.update({r.id: next(iter(placed)) for r in mine})
        else:
            free.append(mine)
    counted = [r for r in records if r.split in ("train", "val") or r.id in out.placed]
    counted += [r for group in free for r in group]
    shares = {"train": 1.0 - val_share, "val": val_share, "test": 0.0}
    per_class = Counter(str(r.label) for r in counted)
    targets = {s: Counter({c: shares[s] * n for c, n in per_class.items()}) for s in mf.SPLITS}
    counts: dict[str, Counter[str]] = {s: Counter() for s in mf.SPLITS}
    for r in counted:
        split = r.split or out.placed.get(r.id)
        if split is not None:
            counts[split][str(r.label)] += 1
    random.Random(seed).shuffle(free)
    free.sort(key=len, reverse=True)
    out.placed.update(_stratified(free, targets, counts))  # test's target is 0: never chosen
    for rid, split in out.placed.items():
        by_id[rid].split = split
    return out


def split_dataset(root: Path | str, **options: Any) -> SplitReport:
    """Split the dataset at ``root`` and save its manifest atomically."""
    manifest = mf.load(root)
    if not len(manifest):
        raise mf.DatasetError(f"{root}: the dataset has no images; import some first")
    options.setdefault("held", production_ids(manifest))  # held out stays held out
    report = assign(manifest, **options)
    mf.save(root, manifest)
    return report


def format_report(report: SplitReport) -> str:
    """A class x split table, then class x split x session."""
    totals = report.totals()
    splits = [*mf.SPLITS, *([PRODUCTION] if PRODUCTION in totals else [])]
    sessions = sorted({s for b in report.counts.values() for d in b.values() for s in d})
    w = max([8, *(len(s) + 1 for s in splits)])
    lines = [f"{'class':<16}" + "".join(f"{s:>{w}}" for s in splits)]
    for cls in sorted(report.counts):
        lines.append(
            f"{cls:<16}" + "".join(f"{totals.get(s, {}).get(cls, 0):>{w}}" for s in splits)
        )
    lines.append(
        f"{'all':<16}" + "".join(f"{sum(totals.get(s, {}).values()):>{w}}" for s in splits)
    )
    lines.append("")
    lw = max([24, *(len(f"{c} / {s}") + 1 for c in report.counts for s in splits)])
    lines.append(f"{'class / split':<{lw}}" + "".join(f"{s:>8}" for s in sessions))
    for cls in sorted(report.counts):
        for split in splits:
            row = report.counts[cls].get(split, {})
            if row:
                label = f"{cls} / {split}"
                lines.append(f"{label:<{lw}}" + "".join(f"{row.get(s, 0):>8}" for s in sessions))
    lines.append("")
    lines.append(
        f"{report.groups} groups; {report.frozen_test} test images kept frozen; "
        f"{report.pulled_into_test} pulled into test with their group; "
        f"{report.unlabelled} unlabelled (no split)"
    )
    held = sum(totals.get(PRODUCTION, {}).values())
    if held:
        lines.append(
            f"{held} images of fresh parts held out as new production (in no split, never "
            "trained or judged on): replay them through a device; inspectors' labels of those "
            "frames join training"
        )
    return "\n".join(lines)
