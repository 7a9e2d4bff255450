"""`lineqc review export-labels`: reviewed frames (seeded through the real wire format and
the review store) become dataset rows with provenance; only agreed and adjudicated labels;
the frozen test split and every existing row stay byte-for-byte as they were; re-runs add
nothing; a later adjudication updates the label; unknown labels write nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from subprocess import CompletedProcess

import cv2
import numpy as np
import pytest

from lineqc.datasets import manifest as mf
from lineqc.review.export_labels import ExportLabelsError, export_labels
from lineqc.review.store import (
    POLICY_VERSION,
    Frame,
    Store,
)
from tests.review.kit import CLASSES, HOUR, NOW, Seeder, manifest_rows, row_id, seed, to_jpeg


@pytest.fixture
def dataset(tmp_path: Path, synth_dataset: Path) -> Path:
    """A private copy of the shared synthetic dataset (split, with a frozen test split)."""
    return Path(shutil.copytree(synth_dataset, tmp_path / "ds"))


def test_final_labels_become_rows_with_full_provenance(store: Store, dataset: Path) -> None:
    scenario = seed(Seeder(store), dataset)
    summary = export_labels(store, dataset, quiet=True)

    exported = set(scenario.labels)
    assert summary.frames == len(scenario.frames)
    assert summary.exported == summary.added == len(exported)
    assert summary.skipped == {"pending": 3, "disputed": 2, "gold": 1, "no-image": 1, "conflict": 0}
    manifest = mf.load(dataset)
    for name, frame_id in scenario.frames.items():
        assert (row_id(frame_id) in manifest.records) == (name in exported), name
    for name in exported:
        row = manifest.records[row_id(scenario.frames[name])]
        assert row.label == scenario.labels[name]
        assert row.source == "dev1/cam0" and row.origin == scenario.frames[name]
        assert row.label_policy == POLICY_VERSION
        assert row.label_source.startswith("inspector:")
        assert (dataset / row.path).is_file() and row.phash

    a2 = manifest.records[row_id(scenario.frames["agreed2"])]
    assert a2.label_source == "inspector:bob+carol"
    e = a2.extra
    assert (e["device"], e["site"], e["line"], e["camera"]) == ("dev1", "site1", "line1", "cam0")
    assert e["frame_id"] == scenario.frames["agreed2"] and e["why"] == "uncertain"
    assert e["model_version"] == "2026.1" and e["classes"] == CLASSES
    assert e["probabilities"] == [0.1, 0.2, 0.45, 0.25]
    assert (e["predicted"], e["verdict"], e["reason"]) == ("ok", "uncertain", "low_confidence")
    assert e["consensus"] == "agreed" and e["agreement"] == 1.0 and e["required_reviews"] == 2
    assert e["inspectors"] == ["bob", "carol"] and e["adjudicator"] is None
    assert [a["answer"] for a in e["answers"]] == ["dent", "dent"]
    ts = NOW - 2 * HOUR
    assert datetime.fromisoformat(str(a2.captured_at)).timestamp() == pytest.approx(ts, abs=1e-3)
    labeled = datetime.fromisoformat(str(a2.labeled_at)).timestamp()
    assert labeled == pytest.approx(datetime.fromisoformat(e["answers"][-1]["at"]).timestamp())

    adj = manifest.records[row_id(scenario.frames["adjudicated"])]
    assert adj.label_source == "inspector:adjudicated:dora"
    assert adj.extra["consensus"] == "adjudicated" and adj.extra["adjudicator"] == "dora"
    assert adj.extra["agreement"] == 0.5 and adj.extra["inspectors"] == ["alice", "bob"]


def test_frozen_test_split_and_existing_rows_stay_as_they_were(
    sqlite_store: Store, dataset: Path
) -> None:
    before = manifest_rows(dataset)
    test_ids = {i for i, line in before.items() if json.loads(line)["split"] == "test"}
    scenario = seed(Seeder(sqlite_store), dataset)
    summary = export_labels(sqlite_store, dataset, quiet=True)

    after = manifest_rows(dataset)
    assert {i: after[i] for i in before} == before  # byte for byte, test rows included
    manifest = mf.load(dataset)
    assert {r.id for r in manifest.in_split("test")} == test_ids
    # The shot of a test image is kept out of every split (training on it would leak the
    # test image) and reported; shots of train and val images join their group's split.
    dup = {s: manifest.records[row_id(scenario.frames[f"dup-{s}"])] for s in mf.SPLITS}
    assert dup["test"].split is None and dup["test"].label == scenario.labels["dup-test"]
    assert dup["train"].split == "train" and dup["val"].split == "val"
    assert [k["frame_id"] for k in summary.kept_out] == [scenario.frames["dup-test"]]
    assert "(test)" in summary.kept_out[0]["why"]
    # Every other new row went to train or val; both got some.
    new_splits = [manifest.records[row_id(f)].split for f in scenario.new_ids]
    assert set(new_splits) == {"train", "val"}
    assert sum(summary.placed.values()) == summary.added - 1
    assert "1 row(s) kept out of training" in summary.text()


def test_rerun_adds_nothing_and_a_later_adjudication_updates_the_label(
    sqlite_store: Store, dataset: Path
) -> None:
    seeder = Seeder(sqlite_store)
    scenario = seed(seeder, dataset)
    first = export_labels(sqlite_store, dataset, quiet=True)
    rows = manifest_rows(dataset)

    again = export_labels(sqlite_store, dataset, quiet=True)
    assert (again.added, again.updated, again.unchanged) == (0, 0, first.exported)
    assert manifest_rows(dataset) == rows and not again.placed

    # The adjudicator settles the disputed frame and overrules an agreed one.
    with sqlite_store.session() as s:
        pks = dict(s.query(Frame.frame_id, Frame.id))
    seeder.adjudicate(pks[scenario.frames["disputed"]], "dora", "dent")
    agreed1 = row_id(scenario.frames["agreed1"])
    relabel = next(c for c in CLASSES if c != rows[agreed1] and c != scenario.labels["agreed1"])
    seeder.adjudicate(pks[scenario.frames["agreed1"]], "dora", relabel)
    third = export_labels(sqlite_store, dataset, quiet=True)
    assert (third.added, third.updated, third.unchanged) == (1, 1, first.exported - 1)
    manifest = mf.load(dataset)
    row = manifest.records[agreed1]
    assert row.label == relabel and row.label_source == "inspector:adjudicated:dora"
    assert row.split == json.loads(rows[agreed1])["split"]  # a new label never moves a row
    settled = manifest.records[row_id(scenario.frames["disputed"])]
    assert settled.label == "dent" and settled.split in ("train", "val")
    assert len(manifest) == len(rows) + 1


def test_a_label_the_dataset_does_not_know_is_refused_and_nothing_written(
    sqlite_store: Store, dataset: Path
) -> None:
    seeder = Seeder(sqlite_store)
    seed(seeder, dataset, n_new=2)
    text = mf.manifest_path(dataset).read_text()
    files = sorted(p for p in dataset.rglob("*") if p.is_file())
    for i in range(4):
        pk = seeder.frame(
            f"crack{i}",
            to_jpeg(cv2.imencode(".png", np.full((32, 32), 9 * i, np.uint8))[1].tobytes()),
        )
        seeder.answer(pk, "alice", "crack")
    with pytest.raises(ExportLabelsError) as err:
        export_labels(sqlite_store, dataset, quiet=True)
    message = str(err.value)
    assert "'crack' (4 frame(s): crack0, crack1, crack2 ...)" in message
    assert "contamination, dent, ok, scratch" in message and "nothing was written" in message
    assert mf.manifest_path(dataset).read_text() == text
    assert sorted(p for p in dataset.rglob("*") if p.is_file()) == files


def test_cli_prints_the_summary_as_json_and_names_errors(
    tmp_path: Path, dataset: Path, lineqc: Callable[..., CompletedProcess[str]]
) -> None:
    db, images = tmp_path / "review.db", tmp_path / "review-images"
    store = Store(str(db), images)
    scenario = seed(Seeder(store), dataset, n_new=3)
    store.close()
    args = ("review", "export-labels", "--db", str(db), "--images", str(images))
    proc = lineqc(*args, "--dataset", str(dataset), "--json")
    doc = json.loads(proc.stdout)
    assert doc["added"] == doc["exported"] == len(scenario.labels)
    assert doc["skipped"]["gold"] == 1 and len(doc["kept_out"]) == 1
    text = lineqc(*args, "--dataset", str(dataset)).stdout
    assert f"{len(scenario.labels)} unchanged" in text and "kept out of training" in text

    missing = lineqc(*args, "--dataset", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "not a dataset" in missing.stderr
    wrong_images = lineqc(
        "review", "export-labels", "--db", str(db), "--images", str(tmp_path / "elsewhere"),
        "--dataset", str(dataset), check=False,
    )  # fmt: skip
    assert wrong_images.returncode == 2 and "is --images the review store's" in wrong_images.stderr


def test_a_label_contradicting_the_same_part_is_held_until_adjudicated(
    sqlite_store: Store, dataset: Path
) -> None:
    manifest = mf.load(dataset)
    by_part: dict[str, list[mf.Record]] = {}
    for r in manifest:
        by_part.setdefault(str(r.group), []).append(r)
    shot, other = next(rows for rows in by_part.values() if len(rows) == 2)  # shot twice
    wrong = next(c for c in CLASSES if c != shot.label)
    seeder = Seeder(sqlite_store)
    pk = seeder.frame("dev1-cam0-again", to_jpeg((dataset / shot.path).read_bytes()))
    seeder.answer(pk, "alice", wrong)  # agreed (one review needed), but wrong
    right = seeder.frame("dev1-cam0-right", to_jpeg((dataset / other.path).read_bytes()))
    seeder.answer(right, "alice", str(other.label))
    rows = manifest_rows(dataset)

    held = export_labels(sqlite_store, dataset, quiet=True)
    (conflict,) = held.conflicts
    assert conflict["frame_id"] == "dev1-cam0-again" and conflict["label"] == wrong
    assert conflict["known"] == [shot.label] and conflict["held"] is True
    assert set(conflict["rows"]) == {shot.id, other.id}  # the shot itself and its part-mate
    assert held.skipped["conflict"] == 1 and held.added == 1  # the right one went in
    assert row_id("dev1-cam0-again") not in mf.load(dataset).records
    assert f"but the dataset says {shot.label} for the same part" in held.text()
    assert "held back until an admin adjudicates it" in held.text()
    assert {i: manifest_rows(dataset)[i] for i in rows} == rows

    # An admin's adjudication is the last word: exported, the contradiction kept with it.
    seeder.adjudicate(pk, "dora", wrong)
    settled = export_labels(sqlite_store, dataset, quiet=True)
    assert settled.added == 1 and settled.conflicts[0]["held"] is False
    row = mf.load(dataset).records[row_id("dev1-cam0-again")]
    assert row.label == wrong and row.extra["contradicts"] == [shot.label]
