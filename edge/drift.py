"""Input drift: one per-frame statistic, its histogram and the score against a reference.

The statistic is a frame's mean brightness on a subsample (``frame_brightness``): the device
computes it for every frame (its telemetry and the ``brightness`` field of each ``result``),
the export computes it on the training split for the bundle's ``drift_reference``, and the
review collector keeps it per camera as a histogram on one fixed grid (``BINS`` bins of
``BIN_WIDTH`` levels over 0..256), so histograms add up across time buckets and compare
against the reference without the raw values. One definition for all three.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

BIN_WIDTH = 4.0
BINS = 64  # 0..256 in BIN_WIDTH steps: 8-bit frames; higher values land in the last bin
PSI_GROUPS = 10  # the reference's deciles: PSI's usual bins, each about 10% of its frames
PSI_FLOOR = 1e-4  # a share never taken as 0 (log of 0): a bin the reference never saw


def subsample(image: np.ndarray) -> np.ndarray:
    """A frame as captured (gray or BGR, any size) on a grid of about 32 points along its
    shorter side, as float32: cheap on the device, the same at export."""
    step = max(1, min(image.shape[:2]) // 32)
    return image[::step, ::step].astype(np.float32)


def frame_brightness(image: np.ndarray) -> float:
    """A frame's mean intensity (on ``subsample``): the drift statistic."""
    return float(subsample(image).mean())


def bin_of(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError(f"brightness {value!r} is not a finite number")
    return min(BINS - 1, max(0, int(value // BIN_WIDTH)))


def histogram(values: Iterable[float]) -> list[int]:
    counts = [0] * BINS
    for v in values:
        counts[bin_of(v)] += 1
    return counts


def _groups(reference: Sequence[int], groups: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the grid, each holding about 1/groups of the reference's frames
    (fewer where the reference sits in a few bins); together they cover the whole grid, so
    a window's frames outside the reference's range still count."""
    total = sum(reference)
    cuts: list[tuple[int, int]] = []
    acc = start = 0
    for i, c in enumerate(reference):
        acc += c
        if acc * groups >= (len(cuts) + 1) * total and i < len(reference) - 1:
            cuts.append((start, i + 1))
            start = i + 1
    cuts.append((start, len(reference)))
    return cuts


def psi(reference: Sequence[int], window: Sequence[int], groups: int = PSI_GROUPS) -> float:
    """Population stability index of ``window`` against ``reference`` (histograms on the
    grid), over the reference's ``groups`` quantile bins. Rule of thumb: < 0.1 stable,
    0.1-0.25 a shift worth a look, > 0.25 a real shift. Its expected value for two samples
    of one distribution is about (groups - 1) * (1/n_reference + 1/n_window): keep windows
    of a few hundred frames or more."""
    if len(reference) != BINS or len(window) != BINS:
        raise ValueError(f"histograms must have {BINS} bins")
    n_ref, n_win = sum(reference), sum(window)
    if n_ref == 0 or n_win == 0:
        raise ValueError("an empty histogram has no distribution to compare")
    score = 0.0
    for a, b in _groups(reference, groups):
        p = max(sum(reference[a:b]) / n_ref, PSI_FLOOR)
        q = max(sum(window[a:b]) / n_win, PSI_FLOOR)
        score += (q - p) * math.log(q / p)
    return score


def ks_distance(reference: Sequence[int], window: Sequence[int]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic on the grid (the largest gap between the
    two cumulative shares at a bin edge; at most the exact one)."""
    n_ref, n_win = sum(reference), sum(window)
    if n_ref == 0 or n_win == 0:
        raise ValueError("an empty histogram has no distribution to compare")
    a = np.cumsum(reference) / n_ref
    b = np.cumsum(window) / n_win
    return float(np.abs(a - b).max())
