"""The manifest file: atomic writes, strict reading, a hash that tracks what a model saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineqc.datasets import manifest as mf
from lineqc.datasets.synth import synthesize


def test_roundtrip_one_row_per_line_no_temp_files(tmp_path: Path) -> None:
    synthesize(tmp_path, 12, seed=1, size=48, quiet=True)
    text = (tmp_path / mf.MANIFEST_NAME).read_text()
    doc = json.loads(text)
    assert doc["schema_version"] == mf.SCHEMA_VERSION and len(doc["images"]) == 12
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith('{"captured_at"')) == 12
    loaded = mf.load(tmp_path)
    mf.save(tmp_path, loaded)
    assert (tmp_path / mf.MANIFEST_NAME).read_text() == text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_strict_reading_names_the_bad_row(tmp_path: Path) -> None:
    synthesize(tmp_path, 3, seed=1, size=48, quiet=True)
    doc = json.loads((tmp_path / mf.MANIFEST_NAME).read_text())
    doc["images"][1]["colour"] = "red"
    (tmp_path / mf.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(mf.DatasetError, match=r"images\[1\]: unknown field\(s\) colour"):
        mf.load(tmp_path)
    doc["images"][1].pop("colour")
    doc["images"][1]["split"] = "holdout"
    (tmp_path / mf.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(mf.DatasetError, match="split 'holdout' is not one of"):
        mf.load(tmp_path)
    (tmp_path / mf.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(mf.DatasetError, match="not a readable manifest"):
        mf.load(tmp_path)


def test_hash_follows_labels_and_splits(tmp_path: Path) -> None:
    synthesize(tmp_path, 5, seed=1, size=48, quiet=True)
    before = mf.manifest_hash(tmp_path)
    manifest = mf.load(tmp_path)
    first = next(iter(manifest))
    first.label = "dent" if first.label != "dent" else "ok"
    mf.save(tmp_path, manifest)
    assert mf.manifest_hash(tmp_path) != before
