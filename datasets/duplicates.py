"""Exact (sha256) and near (perceptual hash) duplicate detection and grouping."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

HASH_BITS = 64
DEFAULT_MAX_DISTANCE = 4  # Hamming bits out of 64: re-encodes and tiny shifts, not lookalikes


def phash(image: np.ndarray) -> str:
    """A 64-bit DCT perceptual hash of an image (gray or BGR), as 16 hex digits."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


class UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {item: item for item in items}

    def find(self, item: str) -> str:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic root: the smallest id

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for item in self.parent:
            out[self.find(item)].append(item)
        return {root: sorted(members) for root, members in out.items()}


def near_pairs(
    hashes: Sequence[tuple[str, str]], max_distance: int = DEFAULT_MAX_DISTANCE
) -> list[tuple[str, str, int]]:
    """Pairs of ids whose hashes differ in at most ``max_distance`` bits.

    Multi-index hashing: cut each hash into max_distance + 1 blocks; two hashes within the
    distance agree exactly on at least one block (pigeonhole), so only ids that share a block
    value are compared. Near-linear for real data instead of all pairs.
    """
    if not hashes:
        return []
    ids = [i for i, _ in hashes]
    values = np.array([int(h, 16) for _, h in hashes], dtype=np.uint64)
    n_blocks = max_distance + 1
    edges = np.linspace(0, HASH_BITS, n_blocks + 1).astype(int)
    candidates: set[tuple[int, int]] = set()
    for lo, hi in itertools.pairwise(edges.tolist()):
        mask = np.uint64((1 << (hi - lo)) - 1)
        keys = (values >> np.uint64(lo)) & mask
        buckets: dict[int, list[int]] = defaultdict(list)
        for idx, key in enumerate(keys.tolist()):
            buckets[key].append(idx)
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1 :]:
                    candidates.add((a, b))
    pairs = []
    for a, b in sorted(candidates):
        distance = int(values[a] ^ values[b]).bit_count()
        if distance <= max_distance:
            pairs.append((ids[a], ids[b], distance))
    return pairs


def duplicate_groups(
    items: Sequence[tuple[str, str, str]], max_distance: int = DEFAULT_MAX_DISTANCE
) -> tuple[list[list[str]], list[list[str]]]:
    """Group ``(id, sha256, phash)`` items; returns (exact groups, near groups), size >= 2.

    A near group is a connected set of images linked by near pairs; exact duplicates are
    also near duplicates, so every exact group lies inside one near group.
    """
    by_sha: dict[str, list[str]] = defaultdict(list)
    for item_id, sha, _ in items:
        by_sha[sha].append(item_id)
    exact = sorted(sorted(ids) for ids in by_sha.values() if len(ids) > 1)
    uf = UnionFind(item_id for item_id, _, _ in items)
    for ids in exact:
        for other in ids[1:]:
            uf.union(ids[0], other)
    for a, b, _ in near_pairs([(i, h) for i, _, h in items if h], max_distance):
        uf.union(a, b)
    near = sorted(m for m in uf.groups().values() if len(m) > 1)
    return exact, near
