"""Defect copy-paste: the defect lands where the donor had it, the OK frame stays itself
elsewhere, brightness is matched, and the choice is reproducible from the seed."""

from __future__ import annotations

import numpy as np

from lineqc.train.copy_paste import CopyPaste, Donor, paste


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
