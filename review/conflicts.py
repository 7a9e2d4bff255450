"""Label conflicts: an inspectors' label that contradicts what the dataset already knows.

A reviewed frame is a new photograph, but often of a part the dataset has a label for: the
same tile shot again, or (in the demo) a held-out production part whose label is the answer
key. The frame's *known labels* are those of the dataset rows that are near duplicates of
its image (perceptual hash within the split's distance) and of every row of those rows'
parts, the frame's own exported row excepted. A final label outside them is a conflict:
``export-labels`` holds the frame back and lists it, and the admin's adjudication queue
shows it beside the disputed frames; an admin's adjudication is the final word.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lineqc.datasets import manifest as mf
from lineqc.datasets.duplicates import DEFAULT_MAX_DISTANCE, phash
from lineqc.datasets.storage import decode
from lineqc.edge.imagesize import MAX_PIXELS, ImageSizeError, bounded_size

ROWS_SHOWN = 3  # rows named as the evidence of a conflict


def own_row_id(device: str, camera: str, frame_id: str) -> str:
    """The dataset row export-labels makes of a frame (source device/camera, origin its id)."""
    return mf.stable_id(f"{device}/{camera}", frame_id)


@dataclass(frozen=True)
class Known:
    """What the dataset says about one frame's part."""

    labels: tuple[str, ...]  # distinct, sorted
    rows: tuple[str, ...]  # the ids of the rows that say so (a few)

    def contradicts(self, label: str | None) -> bool:
        return label is not None and label not in self.labels

    def text(self) -> str:
        return (
            f"the dataset says {' or '.join(self.labels)} for the same part "
            f"(row {', '.join(self.rows)})"
        )


def _hash_bits(hexes: list[str]) -> np.ndarray:
    """Rows of 64 bits, one per 16-hex-digit perceptual hash."""
    values = np.array([int(h, 16) for h in hexes], dtype=">u8")
    return np.unpackbits(values.view(np.uint8)).reshape(len(hexes), 64)


@dataclass
class KnownLabels:
    """The labelled rows of a dataset, searchable by an image's perceptual hash."""

    ids: list[str]
    labels: list[str]
    bits: np.ndarray  # N x 64
    part_of: list[tuple[str, str] | None]
    parts: dict[tuple[str, str], list[int]]
    max_distance: int = DEFAULT_MAX_DISTANCE

    @classmethod
    def of(cls, manifest: mf.Manifest) -> KnownLabels:
        rows = [r for r in manifest if r.label is not None and r.phash]
        part_of = [(r.source, r.group) if r.group is not None else None for r in rows]
        parts: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, part in enumerate(part_of):
            if part is not None:
                parts[part].append(i)
        distance = int(manifest.split_params.get("max_distance", DEFAULT_MAX_DISTANCE))
        return cls(
            [r.id for r in rows],
            [str(r.label) for r in rows],
            _hash_bits([r.phash for r in rows]) if rows else np.zeros((0, 64), np.uint8),
            part_of,
            dict(parts),
            distance,
        )

    def for_hash(self, image_phash: str, own_id: str | None = None) -> Known | None:
        """The known labels of an image with this perceptual hash (None: nothing known)."""
        if not self.ids:
            return None
        distance = (self.bits != _hash_bits([image_phash])).sum(axis=1)
        found = set(np.flatnonzero(distance <= self.max_distance).tolist())
        for i in list(found):
            part = self.part_of[i]
            if part is not None:
                found.update(self.parts[part])
        found = {i for i in found if self.ids[i] != own_id}
        if not found:
            return None
        ordered = sorted(found, key=lambda i: self.ids[i])
        return Known(
            tuple(sorted({self.labels[i] for i in ordered})),
            tuple(self.ids[i] for i in ordered[:ROWS_SHOWN]),
        )


def image_phash(path: Path) -> str | None:
    """The dataset's perceptual hash of a stored frame image; None when it cannot be read
    (its size is read from the header first: a decompression bomb is never expanded)."""
    try:
        bounded_size(path, MAX_PIXELS)
        return phash(decode(path.read_bytes(), str(path)))
    except (OSError, ImageSizeError, mf.DatasetError):
        return None


@dataclass
class ConflictFinder:
    """Known labels of stored frames, their images hashed once (the review app keeps one)."""

    known: KnownLabels
    _hashes: dict[Path, str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def known_for(self, image: Path, own_id: str | None = None) -> Known | None:
        with self._lock:
            if image not in self._hashes:
                self._hashes[image] = image_phash(image)
            digest = self._hashes[image]
        return None if digest is None else self.known.for_hash(digest, own_id)
