"""Sampling, augmentation seeding and the shared preprocessing path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineqc.datasets.manifest import load
from lineqc.datasets.storage import read_image
from lineqc.edge.preprocess import PreprocessSpec, placement, preprocess
from lineqc.train.augment import augment, build_train_transform
from lineqc.train.config import AugmentConfig
from lineqc.train.data import (
    EpochBatches,
    FrameStore,
    TrainImages,
    epoch_order,
    eval_inputs,
    map_target,
)


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
    (a, _), (b, _), (c, _) = augment(t, frame, 7), augment(t, frame, 7), augment(t, frame, 8)
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


def test_sqrt_sampling_lies_between_natural_and_balanced() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    rows = np.array([r for e in range(3) for r, _ in epoch_order(labels, 0, e, "sqrt")])
    share = np.bincount(labels[rows], minlength=2) / len(rows)
    np.testing.assert_allclose(share, [30 / 40, 10 / 40], atol=0.03)  # sqrt(900) : sqrt(100)


def _wide_frames(tmp_path: Path, tall: bool = False) -> tuple[FrameStore, np.ndarray]:
    """A 1:3 frame whose mask marks a blemish near its right end (on disk, as a dataset);
    ``tall``: the same frame turned a quarter anticlockwise (3:1, the blemish at the top)."""
    import cv2

    from lineqc.datasets.ingest import Candidate, ingest

    frame = np.full((60, 180), 120, np.uint8)
    frame[25:35, 150:160] = 20
    mask = np.zeros_like(frame)
    mask[25:35, 150:160] = 255
    if tall:
        frame, mask = np.ascontiguousarray(np.rot90(frame)), np.ascontiguousarray(np.rot90(mask))
    ok, image = cv2.imencode(".png", frame)
    ok2, mask_png = cv2.imencode(".png", mask)
    assert ok and ok2
    ingest(
        tmp_path,
        [Candidate("wide.png", "t", "scratch", data=bytes(image), mask_data=bytes(mask_png))],
        import_name="t",
        quiet=True,
    )
    return FrameStore(tmp_path, list(load(tmp_path)), cache=True, masks=True), frame


def test_training_and_device_inputs_agree_on_a_non_square_frame(tmp_path: Path) -> None:
    frames, frame = _wide_frames(tmp_path)
    spec = PreprocessSpec(64, 64, 1, resize="letterbox", illumination="flatfield")
    labels = np.array([1])
    plain = build_train_transform(AugmentConfig(enabled=False), (64, 64), "letterbox")
    x, _, target, weight = TrainImages(frames, labels, plain, spec, 8, 0)[(0, 3)]
    np.testing.assert_array_equal(x.numpy(), preprocess(frame, spec))  # the device's input
    # augmented: other pixels, the same geometry (the frame keeps its place in the input)
    full = build_train_transform(AugmentConfig(), (64, 64), "letterbox")
    xa, *_ = TrainImages(frames, labels, full, spec, 8, 0)[(0, 3)]
    place = placement(frame.shape, spec)
    inside = np.zeros((64, 64), dtype=bool)
    inside[place.top : place.top + place.height, place.left : place.left + place.width] = True
    assert np.all(xa.numpy()[0][~inside] == 0) and np.all(x.numpy()[0][~inside] == 0)
    # the mask lands where the frame's blemish lands: cells of the right end, frame's band
    assert weight == 1.0 and target.shape == (1, 8, 8)
    hot = np.argwhere(target.numpy()[0] > 0)
    assert hot.size and set(hot[:, 1]) <= {6, 7} and set(hot[:, 0]) <= {3, 4}
    cells = x.numpy()[0].reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(8, 8, -1)
    darkest = np.unravel_index(cells.min(axis=2).argmin(), (8, 8))
    assert tuple(darkest) in {tuple(c) for c in hot}


def test_a_portrait_frame_is_turned_alike_for_training_and_the_device(tmp_path: Path) -> None:
    """orient: landscape puts a tall frame in a wide input as its wide twin, mask included."""
    wide_dir, tall_dir = tmp_path / "wide", tmp_path / "tall"
    wide_frames, wide = _wide_frames(wide_dir)
    tall_frames, tall = _wide_frames(tall_dir, tall=True)
    assert tall.shape == (180, 60)
    spec = PreprocessSpec(32, 96, 1, resize="letterbox", orient="landscape")
    kept = PreprocessSpec(32, 96, 1, resize="letterbox")
    assert placement(tall.shape, spec).turned and not placement(wide.shape, spec).turned
    assert placement(tall.shape, kept).width == 11  # unturned, the tall frame is a sliver
    device = preprocess(tall, spec)
    np.testing.assert_array_equal(device, preprocess(wide, kept))
    plain = build_train_transform(AugmentConfig(enabled=False), (32, 96), "letterbox")
    labels = np.array([1])
    x, _, target, _ = TrainImages(tall_frames, labels, plain, spec, 8, 0)[(0, 3)]
    _, _, wide_target, _ = TrainImages(wide_frames, labels, plain, kept, 8, 0)[(0, 3)]
    np.testing.assert_array_equal(x.numpy(), device)
    np.testing.assert_array_equal(target.numpy(), wide_target.numpy())
    assert target.numpy()[0, :, 9:].any()  # the blemish, at the tall frame's top, lands right


def test_map_target_marks_a_defect_smaller_than_a_cell() -> None:
    spec = PreprocessSpec(64, 64, 1, resize="letterbox")
    mask = np.zeros((300, 300), np.uint8)
    mask[100:102, 200:202] = 255  # 2 px: a blowhole, under a tenth of a cell once scaled
    target = map_target(mask, mask.shape, spec, 8)
    assert target.sum() == 1 and target[0, 2, 5] == 1
