"""The synthetic generator's determinism, and `lineqc data` as a user runs it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineqc.datasets import manifest as mf
from lineqc.datasets.synth import CLASSES, synthesize


def _shas(root: Path) -> list[tuple[str, str]]:
    return [(r.origin, r.sha256) for r in sorted(mf.load(root), key=lambda r: r.origin)]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 40, seed=11, size=64, quiet=True)
    synthesize(tmp_path / "b", 40, seed=11, size=64, quiet=True)
    synthesize(tmp_path / "c", 40, seed=12, size=64, quiet=True)
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")
    assert not set(dict(_shas(tmp_path / "a")).values()) & set(dict(_shas(tmp_path / "c")).values())


def test_prefix_stability_image_i_depends_only_on_seed_and_i(tmp_path: Path) -> None:
    synthesize(tmp_path / "small", 10, seed=5, size=64, quiet=True)
    synthesize(tmp_path / "large", 30, seed=5, size=64, quiet=True)
    assert set(_shas(tmp_path / "small")) <= set(_shas(tmp_path / "large"))


def test_defects_have_masks_and_differ_from_ok_parts(tmp_path: Path) -> None:
    synthesize(tmp_path, 200, seed=3, size=96, quiet=True)
    records = list(mf.load(tmp_path))
    counts = Counter(r.label for r in records)
    assert set(counts) == set(CLASSES) and len(records) == 200
    assert counts["ok"] > max(counts[c] for c in CLASSES if c != "ok")  # OK parts dominate
    for r in records:
        assert (r.mask_path is None) == (r.label == "ok")
        if r.mask_path:
            mask = cv2.imread(str(tmp_path / r.mask_path), cv2.IMREAD_GRAYSCALE)
            assert 0 < np.count_nonzero(mask) < mask.size / 2  # a defect, not the whole part
    assert len({r.session for r in records}) == 3
    assert len({r.group for r in records}) < len(records)  # some parts photographed twice


def test_cli_synth_split_stats_json(tmp_path: Path, lineqc: Callable[..., Any]) -> None:
    ds = tmp_path / "ds"
    lineqc("data", "synth", str(ds), "--n", "60", "--seed", "1", "--size", "48")
    split = lineqc("data", "split", str(ds), "--val", "0.2", "--test", "0.2")
    assert "class" in split.stdout and "train" in split.stdout  # the human-readable report
    stats = json.loads(lineqc("data", "stats", str(ds), "--json").stdout)
    assert stats["images"] == 60
    assert sum(stats["classes"].values()) == 60
    assert sum(stats["sessions"].values()) == 60
    assert set(stats["splits"]) == {"train", "val", "test"}
    assert sum(sum(c.values()) for c in stats["splits"].values()) == 60
    assert stats["rejected"] == 0
    assert isinstance(stats["duplicate_groups"], int)


def test_cli_errors_name_the_input(tmp_path: Path, lineqc: Callable[..., Any]) -> None:
    missing = tmp_path / "nowhere"
    proc = lineqc(
        "data",
        "import",
        str(missing),
        "--format",
        "imagefolder",
        "--dataset",
        str(tmp_path / "d"),
        check=False,
    )
    assert proc.returncode == 2 and f"{missing}: not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"schema_version": 99}')
    proc = lineqc("data", "stats", str(tmp_path / "bad"), check=False)
    assert proc.returncode == 2 and "schema_version 99 is not supported" in proc.stderr


def test_help_for_every_stage(lineqc: Callable[..., Any]) -> None:
    for args in ([], ["data"], ["data", "import"], ["edge"], ["edge", "info"]):
        proc = lineqc(*args, "--help")
        assert "usage: lineqc" in proc.stdout


def test_stats_name_rows_without_a_session_and_the_production_share(
    tmp_path: Path, lineqc: Callable[..., Any]
) -> None:
    from lineqc.datasets.ingest import Candidate, ingest

    ds = tmp_path / "ds"
    lineqc("data", "synth", str(ds), "--n", "60", "--seed", "1", "--size", "48")
    lineqc("data", "split", str(ds), "--production", "0.2")
    frame = mf.load(ds).in_split("train")[0]
    reviewed = Candidate(  # a device frame labelled by inspectors: no capture session
        origin="dev1-cam0-1-0", source="dev1/cam0", label=frame.label,
        file=ds / frame.path, label_source="inspector:ann",
    )  # fmt: skip
    ingest(ds, [reviewed], import_name="review-export-labels", quiet=True)
    text = lineqc("data", "stats", str(ds)).stdout
    assert "None" not in text and "(no session) 1" in text, text
    assert "split production (" in text and "split unassigned (1)" in text, text
