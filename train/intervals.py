"""Bootstrap confidence intervals, resampling whole parts, and the support behind a figure.

Images of one part (a tile shot under five lightings) are not independent evidence: a
bootstrap that resamples images treats them as five and draws intervals too narrow. So the
unit of resampling is the part (the record's ``group``; an image without one is its own
part). Pure numpy, so that export and evaluation share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lineqc.datasets.manifest import Record

REPS = 1000
LEVEL = 0.95
# An interval needs a value in most resamples: AUROC of a resample without a defect has none.
MIN_DEFINED_SHARE = 0.5

Interval = tuple[float, float]


def parts_of(records: Sequence[Record]) -> list[str | None]:
    """Each image's part (None: unknown, the image is a part of its own)."""
    return [None if r.group is None else f"{r.source}\0{r.group}" for r in records]


def cluster_ids(clusters: Sequence[str | None] | None, n: int) -> np.ndarray:
    """An integer cluster per row; rows without a cluster are clusters of their own."""
    if clusters is None:
        return np.arange(n)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster ids for {n} rows")
    names = [c if c is not None else f"\0row{i}" for i, c in enumerate(clusters)]
    _, ids = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    return np.asarray(ids)


def resamples(clusters: np.ndarray, reps: int = REPS, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of ``reps`` bootstrap resamples: whole clusters drawn with replacement."""
    order = np.argsort(clusters, kind="stable")
    uniq, starts, counts = np.unique(clusters[order], return_index=True, return_counts=True)
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        picked = rng.integers(0, len(uniq), size=len(uniq))
        yield np.concatenate([order[starts[c] : starts[c] + counts[c]] for c in picked])


def intervals(
    statistics: Callable[[np.ndarray], Mapping[str, float | None]],
    clusters: np.ndarray,
    reps: int = REPS,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Interval | None]:
    """Percentile intervals of each named statistic over part-level bootstrap resamples.

    ``statistics(rows)`` computes every figure on the rows of one resample at once. A figure
    undefined in most resamples (None) gets no interval.
    """
    values: dict[str, list[float]] = {}
    for rows in resamples(clusters, reps, seed):
        for name, value in statistics(rows).items():
            bucket = values.setdefault(name, [])
            if value is not None and np.isfinite(value):
                bucket.append(float(value))
    tail = (1.0 - level) / 2 * 100
    out: dict[str, Interval | None] = {}
    for name, got in values.items():
        if len(got) < MIN_DEFINED_SHARE * reps:
            out[name] = None
        else:
            lo, hi = np.percentile(got, [tail, 100 - tail])
            out[name] = (round(float(lo), 6), round(float(hi), 6))
    return out


def support(labels: np.ndarray, ok_index: int, clusters: np.ndarray) -> dict[str, int]:
    """What a figure rests on: images, parts, defect images and OK images."""
    defect = labels != ok_index
    return {
        "images": int(labels.size),
        "parts": int(np.unique(clusters).size),
        "defect_images": int(defect.sum()),
        "ok_images": int((~defect).sum()),
    }


def method(reps: int = REPS, level: float = LEVEL) -> dict[str, Any]:
    return {"method": "percentile bootstrap over parts", "reps": reps, "level": level}


def fmt_ci(value: float | None, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.912 [0.871, 0.949]``; ``n/a`` for an undefined value."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval is not None:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text
