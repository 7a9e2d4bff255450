"""What a dataset gained since a run trained on it (``datasets.lineage``): found by taking away
the newest reviewed rows until the manifest hash is the run's; real datasets, real exports."""

from __future__ import annotations

import shutil
from pathlib import Path

from lineqc.datasets import manifest as mf
from lineqc.datasets.lineage import EXPORTED_AT, rows_hash, since
from lineqc.datasets.split import split_dataset
from lineqc.review.export_labels import export_labels
from lineqc.review.store import Store
from tests.review.kit import Seeder, row_id, seed, to_jpeg


def test_rows_hash_is_the_manifest_hash(synth_dataset: Path) -> None:
    assert rows_hash(mf.load(synth_dataset)) == mf.manifest_hash(synth_dataset)


def test_rows_added_by_each_export_are_told_apart_from_other_changes(
    tmp_path: Path, synth_dataset: Path, sqlite_store: Store
) -> None:
    dataset = Path(shutil.copytree(synth_dataset, tmp_path / "ds"))
    trained = mf.manifest_hash(dataset)  # what a champion read
    same = since(mf.load(dataset), trained)
    assert same.known and not same.added and "exactly the one" in same.sentence()
    assert not since(mf.load(dataset), None).known  # a run that recorded no hash

    # Only a shot of a test image: added, but kept out of every split.
    seeder = Seeder(sqlite_store)
    test_row = mf.load(dataset).in_split("test")[0]
    pk = seeder.frame("dev1-cam0-t", to_jpeg((dataset / test_row.path).read_bytes()))
    seeder.answer(pk, "ann", str(test_row.label))
    export_labels(sqlite_store, dataset, quiet=True)
    kept_out = since(mf.load(dataset), trained)
    assert kept_out.known and kept_out.added == [row_id("dev1-cam0-t")]
    assert kept_out.training == [] and "0 of them in train or val" in kept_out.sentence()
    assert EXPORTED_AT in mf.load(dataset).records[row_id("dev1-cam0-t")].extra
    after_first = mf.manifest_hash(dataset)  # what a champion trained after it read

    # A second export with new parts: both exports are found, the new rows in train/val.
    scenario = seed(seeder, dataset, n_new=6)
    export_labels(sqlite_store, dataset, quiet=True)
    later = since(mf.load(dataset), trained)
    manifest = mf.load(dataset)
    reviewed = {r.id for r in manifest if r.label_source.startswith("inspector:")}
    assert later.known and set(later.added) == reviewed
    assert set(later.training) == {i for i in reviewed if manifest.records[i].split}
    assert {row_id(f) for f in scenario.new_ids} <= set(later.training)
    # Against the first export's dataset, only the second export is new.
    second = since(manifest, after_first)
    assert second.known and set(second.added) == reviewed - {row_id("dev1-cam0-t")}

    # A re-split moves rows the run trained on: the change cannot be told row by row.
    split_dataset(dataset, seed=9, unfreeze_test=True)
    assert not since(mf.load(dataset), trained).known
