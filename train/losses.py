"""Classification losses for imbalanced defect data: focal loss and weighted cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig, TrainConfigError


class FocalLoss(nn.Module):
    """Multiclass focal loss (Lin et al. 2017): mean of -alpha_y (1 - p_y)^gamma log p_y.

    ``alpha`` is a per-class weight (None: all 1). With gamma 0 and no alpha it equals
    cross-entropy; the mean is plain (not alpha-normalised) so that alpha scales the loss of
    rare classes up, as in the paper.
    """

    alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, not {gamma}")
        self.gamma = float(gamma)
        self.register_buffer(
            "alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        # (1 - p)^0 is 1 even where p == 1, so gamma 0 is exactly cross-entropy.
        loss = -((1.0 - log_p.exp()).clamp(min=0) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """Inverse-frequency class weights scaled to mean 1 (classes absent from train get 0)."""
    present = [c for c in counts if c > 0]
    if not present:
        raise ValueError("no class has any training images")
    inv = [1.0 / c if c > 0 else 0.0 for c in counts]
    mean = sum(inv) / len(present)
    return [w / mean for w in inv]


def build_loss(cfg: LossConfig, class_counts: Sequence[int]) -> nn.Module:
    """The configured loss for classes whose train-split counts are ``class_counts``."""
    weights: list[float] | None
    if cfg.class_weights == "balanced":
        weights = balanced_weights(class_counts)
    elif cfg.class_weights is not None:
        if len(cfg.class_weights) != len(class_counts):
            raise TrainConfigError(
                f"loss.class_weights has {len(cfg.class_weights)} values for "
                f"{len(class_counts)} classes"
            )
        weights = list(cfg.class_weights)
    else:
        weights = None
    if cfg.name == "focal":
        if cfg.label_smoothing:
            raise TrainConfigError("loss.label_smoothing applies to 'ce' only, not 'focal'")
        return FocalLoss(cfg.gamma, weights)
    return nn.CrossEntropyLoss(
        weight=None if weights is None else torch.tensor(weights, dtype=torch.float32),
        label_smoothing=cfg.label_smoothing,
    )


def map_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """Pixel-wise BCE of the defect map against the mask grid, averaged over each image's
    cells, then over the images that have a mask (``weight`` 1)."""
    if not bool(weight.any()):
        return logits.sum() * 0.0
    per_cell = F.binary_cross_entropy_with_logits(
        logits.float(),
        target,
        pos_weight=torch.tensor(pos_weight, device=logits.device),
        reduction="none",
    )
    per_image = per_cell.flatten(1).mean(1)
    return (per_image * weight).sum() / weight.sum()
