"""An anomaly score learnt from OK frames only: PatchCore-style nearest neighbours.

A frame scores how far its least familiar patch lies from every patch of the OK training
frames. Patches are the backbone's stride-16 features averaged over 3 x 3 neighbourhoods
(each describes a small area with its surroundings); the memory bank is a coreset of the
OK frames' patches (greedy k-centre, so it covers their variety with a few thousand). The
bank is a buffer of the model, so it travels in the checkpoint and, as a constant, in the
ONNX file: the device computes the score in the same pass as the logits. A defect kind that
nobody labelled still looks unlike every OK patch, which the class head cannot promise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

BANK_SIZE = 2048
PROJECTION = 64  # coreset selection measures distances in a random projection (speed)


class PatchMemory(nn.Module):
    """Nearest-neighbour patch distances to a bank of OK patches; empty until ``fill``."""

    bank: torch.Tensor

    def __init__(self, channels: int, size: int = 0) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, channels))

    @property
    def ready(self) -> bool:
        return self.bank.shape[0] > 0

    @staticmethod
    def patches(features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features -> (N, h * w, C) neighbourhood-averaged patch vectors."""
        pooled = F.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly score per image (N,): the largest distance of a patch to its nearest
        bank patch."""
        p = self.patches(features)
        bank = self.bank
        d2 = (p * p).sum(-1, keepdim=True) - 2.0 * p @ bank.T + (bank * bank).sum(-1)
        nearest = d2.min(dim=-1).values.clamp(min=0.0)
        return nearest.max(dim=-1).values.sqrt()

    def fill(self, patches: torch.Tensor, size: int = BANK_SIZE, seed: int = 0) -> None:
        """Keep a coreset of ``size`` of ``patches`` (P, C) as the bank."""
        self.bank = coreset(patches, size, seed).to(self.bank.device)


def coreset(points: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Greedy k-centre: repeatedly add the point farthest from those chosen so far."""
    if len(points) <= size:
        return points.clone()
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(points.shape[1], PROJECTION, generator=g) / PROJECTION**0.5
    q = points.float() @ proj
    first = int(torch.randint(len(q), (1,), generator=g))
    chosen = [first]
    dist = ((q - q[first]) ** 2).sum(1)
    for _ in tqdm(range(size - 1), desc="anomaly coreset", leave=False):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, ((q - q[nxt]) ** 2).sum(1))
    return points[chosen].clone()
