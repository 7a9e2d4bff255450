"""What the optimiser touches and how fast: frozen modules, parameter groups, the schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfigError


def freeze(model: torch.nn.Module, prefixes: list[str]) -> list[torch.nn.Module]:
    """Stop gradients to parameters whose names start with one of ``prefixes``; returns the
    frozen modules, whose BatchNorm statistics ``train_epoch`` keeps fixed too."""
    if not prefixes:
        return []
    names = dict(model.named_modules())
    found = [n for n in names if n and any(n == p or n.startswith(p + ".") for p in prefixes)]
    unknown = [p for p in prefixes if p not in names]
    if unknown:
        raise TrainConfigError(f"optim.freeze: no module named {', '.join(unknown)} in the model")
    for name in found:
        for param in names[name].parameters(recurse=False):
            param.requires_grad_(False)
    return [names[p] for p in prefixes]


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warmup to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
