"""Defect copy-paste: a labelled defect, cut out along its mask, pasted onto an OK part.

A few dozen defective parts teach a model what *those parts* look like as much as what a
defect looks like: on parts it never saw, a classifier trained on magnetic-tile's 43 or so
defective tiles per fold called obvious breaks OK. Pasting each defect onto hundreds of OK
tiles (other textures, other sessions' lighting) leaves the defect as the only thing the
examples have in common.

The donor's frame and mask are scaled to the OK frame's size and the defect lands at the
same relative place (a broken corner stays a corner). Its brightness is matched to the OK
frame around the defect, and its edge feathered, so that a seam is not the tell. The sample
takes the donor's class and mask. Numpy and OpenCV; randomness from the sample's seed only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FEATHER = 0.01  # the blend's soft edge, as a share of the frame's longer side
RING = 0.03  # where brightness is matched: this far around the defect


@dataclass(frozen=True)
class Donor:
    """A training row whose mask marks its defect."""

    index: int  # row in the frame store
    label: int


def paste(
    frame: np.ndarray, donor_frame: np.ndarray, donor_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``frame`` with the donor's defect pasted in; returns (frame, mask), uint8, frame's size."""
    h, w = frame.shape[:2]
    source = cv2.resize(donor_frame, (w, h), interpolation=cv2.INTER_AREA)
    mask = cv2.resize((donor_mask > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    if source.ndim == 2 and frame.ndim == 3:
        source = source[:, :, None]
    source = source.reshape(frame.shape)
    side = max(h, w)
    ring_px = max(3, round(RING * side))
    grown = cv2.dilate(mask, np.ones((ring_px, ring_px), np.uint8))
    ring = (grown > 0) & (mask == 0)
    target = frame.astype(np.float32)
    donor = source.astype(np.float32)
    if ring.any():  # the defect's surroundings as bright in the donor as here
        gain = (target[ring].mean() + 1.0) / (donor[ring].mean() + 1.0)
        donor = donor * gain
    sigma = max(0.5, FEATHER * side)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    alpha = np.maximum(alpha, mask.astype(np.float32) * 0.9)  # the defect itself stays opaque
    alpha = alpha.reshape(h, w, *([1] * (frame.ndim - 2)))
    out = target * (1.0 - alpha) + donor * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


class CopyPaste:
    """Turns some OK samples into defects pasted from donors, reproducibly by seed.

    ``probability``: the share of OK samples that get a defect. Donors are drawn class first
    (each defect class equally), then a donor of that class, so rare defects are pasted as
    often as common ones.
    """

    def __init__(self, donors: Sequence[Donor], probability: float) -> None:
        self.probability = probability
        self.by_class: dict[int, list[Donor]] = {}
        for d in donors:
            self.by_class.setdefault(d.label, []).append(d)
        self.classes = sorted(self.by_class)

    def __call__(
        self,
        frame: np.ndarray,
        seed: int,
        load: Callable[[int], tuple[np.ndarray, np.ndarray | None]],
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(frame, mask, label) of a pasted defect, or None to keep the OK sample as it is.
        ``load(index)`` gives a donor row's frame and mask."""
        if not self.classes:
            return None
        rng = np.random.default_rng([seed, 0x5EED])
        if rng.random() >= self.probability:
            return None
        options = self.by_class[self.classes[int(rng.integers(len(self.classes)))]]
        donor = options[int(rng.integers(len(options)))]
        donor_frame, donor_mask = load(donor.index)
        if donor_mask is None or not donor_mask.any():
            return None
        pasted, mask = paste(frame, donor_frame, donor_mask)
        return pasted, mask, donor.label
