"""Sampling, augmentation seeding and the shared preprocessing path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineqc.datasets.manifest import load
from lineqc.datasets.storage import read_image
from lineqc.edge.preprocess import PreprocessSpec, preprocess
from lineqc.train.augment import augment, build_train_transform
from lineqc.train.config import AugmentConfig
from lineqc.train.data import EpochBatches, FrameStore, epoch_order, eval_inputs


def test_epoch_order_is_seeded_and_changes_per_epoch() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    assert epoch_order(labels, 1, 0, False) == epoch_order(labels, 1, 0, False)
    assert epoch_order(labels, 1, 0, False) != epoch_order(labels, 1, 1, False)
    rows = sorted(r for r, _ in epoch_order(labels, 1, 0, False))
    assert rows == list(range(40))  # plain sampling: every row once


def test_balanced_sampling_draws_classes_equally() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    rows = np.array([r for e in range(3) for r, _ in epoch_order(labels, 0, e, True)])
    share = np.bincount(labels[rows], minlength=3) / len(rows)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)


def test_ranks_split_the_epoch_exactly_with_equal_steps() -> None:
    labels = np.arange(53) % 3
    single = [s for b in EpochBatches(labels, 8, 5, False) for s in b]
    shards = [list(EpochBatches(labels, 8, 5, False, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    union = sorted(s for shard in shards for b in shard for s in b)
    assert union == sorted(single) and len(union) == 53


def test_augmentation_depends_on_the_seed_only(synth_dataset: Path) -> None:
    record = load(synth_dataset).in_split("train")[0]
    frame = read_image(synth_dataset, record)
    t = build_train_transform(AugmentConfig(noise_p=1.0, clahe_p=1.0), (32, 32))
    a, b, c = augment(t, frame, 7), augment(t, frame, 7), augment(t, frame, 8)
    assert a.shape == (32, 32, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_eval_inputs_are_the_edge_preprocessing(synth_dataset: Path) -> None:
    records = load(synth_dataset).in_split("val")[:3]
    spec = PreprocessSpec(height=40, width=40, channels=1)
    frames = FrameStore(synth_dataset, records, cache=True)
    inputs = eval_inputs(frames, spec).numpy()
    for i, r in enumerate(records):
        np.testing.assert_array_equal(inputs[i], preprocess(read_image(synth_dataset, r), spec))
    lazy = FrameStore(synth_dataset, records, cache=False)
    np.testing.assert_array_equal(eval_inputs(lazy, spec).numpy(), inputs)
