"""Part ids: frame runs (magnetic-tile), path patterns (ImageFolder), and splits that keep a
part's shots together, on the real data too."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from lineqc.datasets import importers
from lineqc.datasets import manifest as mf
from lineqc.datasets.ingest import ingest
from lineqc.datasets.manifest import DatasetError
from lineqc.datasets.parts import Shot, frame_run_parts, pattern_part
from lineqc.datasets.split import split_dataset

SESSIONS = ["exp1", "exp2", "exp3", "exp4", "exp5"]


def _tile(label: str, first: int, step: int = 15, sessions: list[str] = SESSIONS) -> list[Shot]:
    return [Shot(label, first + i * step, s) for i, s in enumerate(sessions)]


def test_frame_runs_make_one_part_per_tile() -> None:
    shots = [*_tile("Crack", 3000), *_tile("Crack", 9000), *_tile("Free", 3010)]
    parts = frame_run_parts(shots)
    assert parts == ["Crack-3000"] * 5 + ["Crack-9000"] * 5 + ["Free-3010"] * 5


def test_a_tile_shot_with_a_pause_is_joined_but_whole_neighbours_are_not() -> None:
    # Break 98080, 98102, 98116 then 98305, 98336: one tile, a 189-frame pause
    paused = _tile("Break", 98080, 15, SESSIONS[:3]) + _tile("Break", 98305, 30, SESSIONS[3:])
    # two whole tiles 400 frames apart stay two parts
    near = _tile("Break", 200000) + _tile("Break", 200460)
    parts = frame_run_parts(paused + near)
    assert len(set(parts[:5])) == 1
    assert parts[5] != parts[10] and len(set(parts[5:10])) == 1 and len(set(parts[10:])) == 1


def test_a_rare_session_does_not_make_runs_incomplete() -> None:
    # one exp0 shot beside many full tiles: exp0 is a one-off capture, not a missing session
    shots = [Shot("Uneven", 461, "exp0"), *_tile("Uneven", 524)]
    # whole tiles 1,500 frames apart: were exp0 a regular session, each would lack it, count
    # as incomplete and be joined to its neighbours
    shots += [s for k in range(12) for s in _tile("Uneven", 10000 + 1500 * k)]
    shots += _tile("Uneven", 80000, 15, SESSIONS[:4])  # incomplete, but far from the rest
    parts = frame_run_parts(shots)
    assert len(set(parts[:6])) == 1  # exp0's shot joins the tile right after it
    assert len(Counter(parts)) == 1 + 12 + 1


def test_pattern_part_reads_a_group_or_names_the_mismatch() -> None:
    assert pattern_part(re.compile(r"^(?P<part>\d+)_"), "0042_cam1.png") == "0042"
    assert pattern_part(re.compile(r"^([^/]+)/"), "p7/shot2.png") == "p7"
    with pytest.raises(DatasetError, match=r"0042\.png: the part pattern"):
        pattern_part(re.compile(r"^(\d+)_"), "0042.png")


def test_imagefolder_part_pattern_keeps_parts_together(tmp_path: Path, lineqc) -> None:
    from lineqc.datasets.synth import candidates

    src = tmp_path / "src"
    for i, cand in enumerate(candidates(40, seed=5, size=48)):
        target = src / str(cand.label) / f"part{i // 4:02d}" / f"shot{i % 4}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(cand.read())
    ds = tmp_path / "ds"
    lineqc(
        "data",
        "import",
        str(src),
        "--format",
        "imagefolder",
        "--dataset",
        str(ds),
        "--part-pattern",
        "^([^/]+)/",
    )
    lineqc("data", "split", str(ds), "--val", "0.2", "--test", "0.3")
    splits: dict[str, set[str | None]] = defaultdict(set)
    for r in mf.load(ds):
        assert r.group is not None and r.origin.split("/")[1] == r.group
        splits[f"{r.label}/{r.group}"].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    bad = lineqc(
        "data",
        "import",
        str(src),
        "--format",
        "imagefolder",
        "--dataset",
        str(ds),
        "--part-pattern",
        "^(\\d+)_",
        check=False,
    )
    assert bad.returncode != 0 and "the part pattern" in bad.stderr


def test_magnetic_tile_parts_and_the_default_split(tmp_path: Path, magnetic_tile: Path) -> None:
    ds = tmp_path / "mt"
    ingest(
        ds, importers.magnetic_tile(magnetic_tile), import_name="mt", ok_class="Free", quiet=True
    )
    records = list(mf.load(ds))
    parts = Counter((r.label, r.group) for r in records)
    assert all(r.group for r in records)
    assert 200 <= len(parts) <= 230  # about 225 physical tiles, a few joined where unsure
    # a tile is shot once per session: a part repeats a session only where two were joined
    per_part_sessions = defaultdict(list)
    for r in records:
        per_part_sessions[r.group].append(r.session)
    single = [s for s in per_part_sessions.values() if len(s) <= 6]
    assert sum(len(set(s)) == len(s) for s in single) >= 0.95 * len(single)
    # the frame runs join what perceptual hashes miss: the published sibling example
    blowhole = {r.extra["frame_number"]: r.group for r in records if r.label == "Blowhole"}
    assert len({blowhole[n] for n in (3667, 3696, 3710, 3724, 3746)}) == 1

    report = split_dataset(ds)
    by_part: dict[str | None, set[str | None]] = defaultdict(set)
    for r in mf.load(ds):
        by_part[r.group].add(r.split)
    assert all(len(s) == 1 for s in by_part.values())
    totals = {s: sum(c.values()) for s, c in report.totals().items()}
    assert 0.16 <= totals["test"] / 1119 <= 0.24 and 0.11 <= totals["val"] / 1119 <= 0.19
    # every session is in every split: parts, not lightings, are held out
    for split in ("train", "val", "test"):
        assert {r.session for r in mf.load(ds) if r.split == split} >= set(SESSIONS)
