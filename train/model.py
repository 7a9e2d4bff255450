"""timm classifiers by name, and the preprocessing spec that goes with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch

from lineqc.edge.preprocess import PreprocessSpec

from .config import ConfigError, TrainConfig

IMAGENET_GRAY = ((0.449,), (0.226,))  # ImageNet mean/std averaged over RGB


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool | str = False,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A timm model; ``pretrained`` is False, True (timm hub) or a local weights file.

    timm adapts the first convolution to ``in_chans`` and drops a classifier of another width,
    for hub and local weights alike.
    """
    if not timm.is_model(name):
        raise ConfigError(f"model '{name}' is not a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained: weights file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(
            name, pretrained=bool(pretrained), num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as exc:  # an unknown model_kwargs entry
        raise ConfigError(f"model_kwargs for '{name}': {exc}") from None


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The input spec of a run: size and channels from the config, normalisation by default.

    Pretrained weights expect ImageNet statistics; from scratch, the edge default is used.
    """
    h, w = cfg.size_hw
    if cfg.mean is not None and cfg.std is not None:
        mean, std = cfg.mean, cfg.std
    elif cfg.pretrained:
        if cfg.channels == 1:
            mean, std = IMAGENET_GRAY
        else:
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    else:
        default = PreprocessSpec()
        mean = default.mean * cfg.channels
        std = default.std * cfg.channels
    try:
        return PreprocessSpec(
            height=h,
            width=w,
            channels=cfg.channels,
            mean=tuple(mean),
            std=tuple(std),
            interpolation=cfg.interpolation,
        )
    except ValueError as exc:
        raise ConfigError(f"preprocessing (mean/std/channels): {exc}") from None
