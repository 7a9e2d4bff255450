"""Defect copy-paste: the defect lands where the donor had it, the OK frame stays itself
elsewhere, brightness is matched, and the choice is reproducible from the seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lineqc.datasets.manifest import load
from lineqc.datasets.storage import read_mask
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.train.augment import build_train_transform
from lineqc.train.config import AugmentConfig, TrainConfig
from lineqc.train.copy_paste import CopyPaste, Donor, paste
from lineqc.train.data import FrameStore, TrainImages, map_target
from lineqc.train.loop import Trainer


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ok = rng.normal(100, 4, (120, 160)).clip(0, 255).astype(np.uint8)
    donor = rng.normal(200, 4, (60, 80)).clip(0, 255).astype(np.uint8)  # brighter lighting
    donor[20:26, 50:60] = 100  # its defect: darker than its surroundings by half
    mask = np.zeros_like(donor)
    mask[20:26, 50:60] = 255
    return ok, donor, mask


def test_the_defect_lands_in_place_with_matched_brightness() -> None:
    ok, donor, mask = _frames()
    out, out_mask = paste(ok, donor, mask)
    assert out.shape == ok.shape and out_mask.shape == ok.shape
    hot = out_mask > 0
    rows, cols = np.nonzero(hot)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 51, 100, 119)  # scaled x2
    assert abs(out[hot].mean() - 50) < 8  # half the OK frame's brightness, like in the donor
    far = np.ones_like(hot)
    far[30:62, 90:130] = False
    np.testing.assert_array_equal(out[far], ok[far])  # the rest is the OK frame


def test_copy_paste_is_seeded_and_balances_classes() -> None:
    ok, donor, mask = _frames()
    donors = [Donor(0, 1), Donor(1, 1), Donor(2, 1), Donor(3, 2)]
    got = []

    def load(index: int) -> tuple[np.ndarray, np.ndarray]:
        got.append(index)
        return donor, mask

    cp = CopyPaste(donors, probability=0.5)
    results = [cp(ok, seed, load) for seed in range(400)]
    pasted = [r for r in results if r is not None]
    assert 150 < len(pasted) < 250  # about half
    labels = [r[2] for r in pasted]
    assert abs(labels.count(2) - labels.count(1)) < 0.3 * len(pasted)  # classes, not donors
    again = cp(ok, 7, load)
    first = results[7]
    assert (again is None) == (first is None)
    if first is not None and again is not None:
        np.testing.assert_array_equal(first[0], again[0])
    assert CopyPaste([], 1.0)(ok, 0, load) is None


def test_an_ok_training_sample_becomes_a_donors_defect(synth_dataset: Path) -> None:
    records = [r for r in load(synth_dataset) if r.split == "train"]
    ok = next(r for r in records if r.label == "ok")
    defect = next(r for r in records if r.label != "ok" and r.mask_path)
    frames = FrameStore(synth_dataset, [ok, defect], cache=True, masks=True)
    spec = PreprocessSpec(64, 64, 1)
    plain = build_train_transform(AugmentConfig(enabled=False), (64, 64), "stretch")
    labels = np.array([0, 1])
    x, label, target, weight = TrainImages(frames, labels, plain, spec, 8, 0)[(0, 5)]
    assert label == 0 and weight == 1.0 and target.sum() == 0  # the OK part as it is
    pasting = CopyPaste([Donor(1, 1)], probability=1.0)
    xp, label, target, weight = TrainImages(frames, labels, plain, spec, 8, 0, pasting)[(0, 5)]
    assert label == 1 and weight == 1.0  # the donor's class, and its mask as the map target
    expected = map_target(read_mask(synth_dataset, defect), (64, 64), spec, 8)  # type: ignore[arg-type]
    np.testing.assert_array_equal(target.numpy(), expected)
    changed = np.abs(xp.numpy() - x.numpy())[0] > 0.05
    assert changed.any() and expected[0].repeat(8, 0).repeat(8, 1)[changed].mean() > 0.5


def test_training_pastes_from_the_train_splits_masked_defects(
    synth_dataset: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    trainer = Trainer(tiny_config(augment={"copy_paste": 0.5}), synth_dataset, tmp_path / "run")
    assert trainer.run()["best_epoch"] >= 1 and (tmp_path / "run" / "best.pt").is_file()
    pasting = trainer.loader.dataset.copy_paste  # type: ignore[attr-defined]
    assert isinstance(pasting, CopyPaste) and pasting.probability == 0.5
    donors = [trainer.train_records[d.index] for c in pasting.classes for d in pasting.by_class[c]]
    masked = [r for r in trainer.train_records if r.label != "ok" and r.mask_path]
    assert masked and sorted(r.id for r in donors) == sorted(r.id for r in masked)
