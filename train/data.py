"""Images of a dataset split for training and evaluation.

Decoded frames are cached as uint8 arrays when the split fits in memory (decoding a JPEG
costs more than augmenting it); otherwise DataLoader workers decode from disk. Every epoch's
sample order and every sample's augmentation come from (seed, epoch, position), so the same
seed gives the same batches with any worker count, across DDP ranks, and after ``--resume``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from lineqc.datasets.manifest import Record
from lineqc.datasets.storage import read_image, read_mask
from lineqc.edge.preprocess import PreprocessSpec, placement, preprocess

from .augment import augment
from .copy_paste import CopyPaste


class FrameStore:
    """The uint8 frames of some records (and with ``masks``, their defect masks), decoded
    once into memory or read on demand."""

    def __init__(
        self,
        root: Path,
        records: Sequence[Record],
        cache: bool,
        desc: str = "decode",
        masks: bool = False,
    ):
        self.root = root
        self.records = list(records)
        self.with_masks = masks
        self.frames: list[np.ndarray] | None = None
        self.masks: list[np.ndarray | None] | None = None
        if cache:
            self.frames = [read_image(root, r) for r in tqdm(self.records, desc=desc, leave=False)]
            if masks:
                self.masks = [read_mask(root, r) for r in self.records]

    @staticmethod
    def decoded_mb(records: Sequence[Record]) -> float:
        return sum(r.width * r.height * max(r.channels, 1) for r in records) / 2**20

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.frames is not None:
            return self.frames[i]
        return read_image(self.root, self.records[i])

    def mask(self, i: int) -> np.ndarray | None:
        if self.masks is not None:
            return self.masks[i]
        return read_mask(self.root, self.records[i]) if self.with_masks else None


def map_target(
    mask: np.ndarray, frame_hw: tuple[int, int], spec: PreprocessSpec, stride: int
) -> np.ndarray:
    """A frame's defect mask in the model's defect-map grid: placed as ``preprocess`` places
    the frame, then max-pooled by ``stride``, so that a defect a few pixels wide still marks
    its cell. float32 (1, H / stride, W / stride), 1 where any defect pixel falls."""
    place = placement(frame_hw, spec)
    cover = cv2.resize(
        place.orient((mask > 0).astype(np.float32)),
        (place.width, place.height),
        interpolation=cv2.INTER_AREA,
    )
    full = place.into_input(cover, spec.height, spec.width)
    pooled = F.max_pool2d(torch.from_numpy(full)[None, None], stride, ceil_mode=True)
    return (pooled[0] > 0).numpy().astype(np.float32)


Sample = tuple[torch.Tensor, int, torch.Tensor, float]


class TrainImages(Dataset[Sample]):
    """Augmented, preprocessed training samples, indexed by (row, augmentation seed).

    A sample is (input, label, defect-map target, its weight). With ``map_stride`` the target
    comes from the row's mask; an OK row without a mask has an empty one; a defect row
    without a mask has no target (weight 0). Without ``map_stride`` the target is empty.
    """

    def __init__(
        self,
        frames: FrameStore,
        labels: np.ndarray,
        transform: A.Compose,
        spec: PreprocessSpec,
        map_stride: int | None = None,
        ok_index: int | None = None,
        copy_paste: CopyPaste | None = None,
    ):
        self.frames, self.labels, self.transform, self.spec = frames, labels, transform, spec
        self.map_stride, self.ok_index, self.copy_paste = map_stride, ok_index, copy_paste

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        i, seed = item
        label = int(self.labels[i])
        frame = self.frames[i]
        mask = self.frames.mask(i) if self.map_stride else None
        if self.copy_paste is not None and label == self.ok_index:
            pasted = self.copy_paste(frame, seed, lambda j: (self.frames[j], self.frames.mask(j)))
            if pasted is not None:
                frame, mask, label = pasted
        if self.map_stride and mask is None and label == self.ok_index:
            mask = np.zeros(frame.shape[:2], np.uint8)  # an OK part has no defect pixels
        image, mask = augment(self.transform, frame, seed, mask)
        x = torch.from_numpy(preprocess(image, self.spec))
        if not self.map_stride:
            return x, label, torch.zeros(0), 0.0
        if mask is None:
            h, w = -(-self.spec.height // self.map_stride), -(-self.spec.width // self.map_stride)
            return x, label, torch.zeros(1, h, w), 0.0
        target = map_target(mask, image.shape[:2], self.spec, self.map_stride)
        return x, label, torch.from_numpy(target), 1.0


def epoch_order(
    labels: np.ndarray, seed: int, epoch: int, balanced: bool | str
) -> list[tuple[int, int]]:
    """(row, augmentation seed) for each sample of one epoch, the same on every rank.

    Balanced (True): as many draws as rows, each class equally likely (rows drawn with
    replacement). "sqrt": each class drawn in proportion to the square root of its count.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(labels)
    if balanced:
        counts = np.bincount(labels, minlength=int(labels.max()) + 1)
        per_row = counts[labels].astype(np.float64)
        weights = 1.0 / (np.sqrt(per_row) if balanced == "sqrt" else per_row)
        rows = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        rows = rng.permutation(n)
    seeds = rng.integers(0, 2**31 - 1, size=n)
    return [(int(r), int(s)) for r, s in zip(rows, seeds, strict=True)]


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """This rank's batches of the epoch: positions rank, rank+world, ..., in equal step counts.

    The epoch holds exactly one sample per row (or draw) whatever the world size, and every
    rank gets the same number of steps (DDP needs that), so batches may differ by one image.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        balanced: bool | str,
        rank: int = 0,
        world: int = 1,
    ):
        self.labels, self.seed, self.balanced = labels, seed, balanced
        self.rank, self.world = rank, world
        self.per_rank = max(1, batch_size // world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def steps(self) -> int:
        return max(1, math.ceil(math.ceil(len(self.labels) / self.world) / self.per_rank))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        mine = epoch_order(self.labels, self.seed, self.epoch, self.balanced)[
            self.rank :: self.world
        ]
        for chunk in np.array_split(np.arange(len(mine)), self.steps):
            yield [mine[j] for j in chunk]


def eval_inputs(frames: FrameStore, spec: PreprocessSpec) -> torch.Tensor:
    """The device's preprocessing of every frame, stacked (N, C, H, W) float32."""
    out = torch.empty((len(frames), spec.channels, spec.height, spec.width), dtype=torch.float32)
    for i in range(len(frames)):
        out[i] = torch.from_numpy(preprocess(frames[i], spec))
    return out
