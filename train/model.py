"""timm classifiers by name, with an optional defect-map head, and their preprocessing spec.

Pretrained weights come from timm's hub (``pretrained: true``), a local file (a path), or a
named source installed from a package registry (``pretrained_sources``), which is what
works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lineqc.edge.preprocess import PreprocessSpec

from . import pretrained_sources
from .anomaly import PatchMemory
from .config import TrainConfig, TrainConfigError

IMAGENET_GRAY = ((0.449,), (0.226,))  # ImageNet mean/std averaged over RGB
MAP_CHANNELS = 64
# The views of ``flip_views``, as the image axes each mirrors: the frame, left-right, upside
# down, both. A tile mirrored is still the same tile, with the same defects.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
# Where a DefectNet's defect logit comes from when it scores (``outputs``): the class head,
# which reads the pooled features and the map's evidence, or the map's maximum alone.
DEFECT_SCORES = ("head", "map")


class DefectNet(nn.Module):
    """A timm classifier plus a defect map: per-pixel defect logits at stride 8.

    The map head is a small feature pyramid over the backbone's stride-8, stride-16 and final
    features; training supervises it with the datasets' defect masks, which teaches the
    shared backbone where defects are, not only that there is one. The class head
    (``DefectHead``) reads the pooled features and the map's evidence (its maximum, top-k
    mean and mean), so a small defect the map found weighs in the decision. ``forward``
    returns ``(class logits, map logits)``; the map is ``input / 8`` on each side.
    ``memory``, once filled from OK frames after training, scores anomalies on the stride-16
    features. ``flip_views`` > 1: ``outputs`` scores the frame and its mirror images
    (``FLIPS``) as one batch and averages them; training (``forward``) sees single frames.
    """

    stride = 8
    top_k = 4

    def __init__(
        self, backbone: Any, ok_index: int = 0, flip_views: int = 1, defect_score: str = "head"
    ) -> None:
        super().__init__()  # backbone: a timm model (untyped API)
        if flip_views not in (1, 2, 4):
            raise ValueError(f"flip_views must be 1, 2 or 4 (got {flip_views})")
        if defect_score not in DEFECT_SCORES:
            raise ValueError(f"defect_score must be one of {DEFECT_SCORES} (got {defect_score!r})")
        self.flip_views = flip_views
        self.defect_score = defect_score
        num_classes = int(backbone.num_classes)
        backbone.reset_classifier(0)
        self.backbone = backbone
        info = backbone.feature_info
        reductions = [int(f["reduction"]) for f in info]
        self.indices = [reductions.index(8), reductions.index(16)]
        c8, c16 = (int(info[i]["num_chs"]) for i in self.indices)
        final = int(backbone.num_features)
        self.map_head = MapHead((c8, c16, final))
        self.head = DefectHead(final + 3, num_classes, ok_index)
        self.memory = PatchMemory(c16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, defect_map, _ = self.run(x)
        return logits, defect_map

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the device gets: logits, defect probability per cell, and (with a filled
        memory) the anomaly score; with ``flip_views`` > 1 each averaged over the views, the
        maps mirrored back onto the frame first. ``defect_score`` "map": the defect logit is
        the map's maximum."""
        flips = FLIPS[: self.flip_views]
        if len(flips) > 1:
            x = torch.cat([x.flip(axes) if axes else x for axes in flips])
        logits, defect_map, f16 = self.run(x, defect_from_map=self.defect_score == "map")
        out: tuple[torch.Tensor, ...] = (logits, torch.sigmoid(defect_map))
        out = (*out, self.memory(f16)) if self.memory.ready else out
        if len(flips) == 1:
            return out
        # (views * N, ...) -> (views, N, ...): the batch size stays dynamic in ONNX
        logits, maps, *score = (o.reshape(len(flips), -1, *o.shape[1:]) for o in out)
        maps = torch.stack([maps[i].flip(a) if a else maps[i] for i, a in enumerate(flips)])
        return tuple(o.mean(dim=0) for o in (logits, maps, *score))

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-16 features that ``memory`` compares (N, C, h, w)."""
        return self.run(x)[2]

    def run(
        self, x: torch.Tensor, defect_from_map: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        final, (f8, f16) = self.backbone.forward_intermediates(
            x, indices=self.indices, intermediates_only=False
        )
        defect_map = self.map_head(f8, f16, final)
        cells = defect_map.flatten(1)
        evidence = torch.stack(
            [
                cells.max(dim=1).values,
                cells.topk(self.top_k, dim=1).values.mean(dim=1),
                cells.mean(dim=1),
            ],
            dim=1,
        )
        pooled = self.backbone.forward_head(final)
        defect = evidence[:, :1] if defect_from_map else None
        return self.head(torch.cat([pooled, evidence], dim=1), defect), defect_map, f16


class MapHead(nn.Module):
    """Defect logits per stride-8 cell from the stride-8, stride-16 and final features: each
    projected to a common width, upsampled to stride 8, summed, then a 3x3 convolution."""

    def __init__(self, channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, MAP_CHANNELS, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(MAP_CHANNELS, MAP_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(MAP_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(MAP_CHANNELS, 1, 1),
        )

    def forward(self, f8: torch.Tensor, f16: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        size = f8.shape[-2:]
        fused = self.lateral[0](f8)
        for lateral, feature in zip(self.lateral[1:], (f16, final), strict=True):
            fused = fused + F.interpolate(lateral(feature), size=size, mode="nearest")
        out: torch.Tensor = self.fuse(fused)
        return out


class DefectHead(nn.Module):
    """Class logits in two steps: is there a defect, and if so which.

    ``p(OK) = 1 - sigmoid(d)`` and ``p(class c) = sigmoid(d) * softmax(k)_c`` for the defect
    classes, returned as log-probabilities (their softmax gives back exactly these), so the
    decision policy and temperature scaling work on them as on any logits. The defect logit
    ``d`` starts out as the defect map's maximum (the last three inputs are the map's
    evidence, the first its maximum): a small defect the map finds counts from the start,
    where a flat classifier would first have to learn to look at one input among 1,283.
    """

    def __init__(self, features: int, num_classes: int, ok_index: int) -> None:
        super().__init__()
        self.ok_index = ok_index
        self.defect = nn.Linear(features, 1)
        self.kind = nn.Linear(features, num_classes - 1)
        with torch.no_grad():
            self.defect.weight.zero_()
            self.defect.weight[0, features - 3] = 1.0  # the map's maximum

    def forward(self, h: torch.Tensor, defect: torch.Tensor | None = None) -> torch.Tensor:
        """``defect``: a defect logit (N x 1) to use instead of the learnt one."""
        d = self.defect(h) if defect is None else defect
        defects = F.logsigmoid(d) + F.log_softmax(self.kind(h), dim=1)
        i = self.ok_index
        return torch.cat([defects[:, :i], F.logsigmoid(-d), defects[:, i:]], dim=1)


class ExportHeads(nn.Module):
    """What the ONNX file computes: ``logits`` and, for a DefectNet, ``defect_map``
    (per-pixel defect probability, N x 1 x H/8 x W/8) and ``anomaly`` (N) when its memory
    is filled."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(self.model, DefectNet):
            return self.model.outputs(x)
        out: torch.Tensor = self.model(x)
        return out


def class_logits(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The class logits of a model's output (a DefectNet gives a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool | str = False,
    model_kwargs: dict[str, Any] | None = None,
    defect_map: bool = False,
    ok_index: int = 0,
    flip_views: int = 1,
    defect_score: str = "head",
) -> torch.nn.Module:
    """A timm model, wrapped in a ``DefectNet`` when ``defect_map`` (``ok_index``: which of
    the classes means OK; ``flip_views``: how many views its outputs average;
    ``defect_score``: where its scored defect logit comes from).

    ``pretrained``: False, True (timm hub), a named source (``pretrained_sources.NAMED``) or
    a local weights file. timm adapts the first convolution to ``in_chans`` and drops a
    classifier of another width, for hub and local weights alike; named sources do the same.
    """
    if not timm.is_model(name):
        raise TrainConfigError(f"model '{name}' is not a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    named = isinstance(pretrained, str) and pretrained in pretrained_sources.NAMED
    if isinstance(pretrained, str) and not named:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise TrainConfigError(
                f"pretrained: weights file {path} does not exist (named sources: "
                f"{', '.join(sorted(pretrained_sources.NAMED))})"
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = timm.create_model(
            name,
            pretrained=bool(pretrained) and not named,
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )
    except TypeError as exc:  # an unknown model_kwargs entry
        raise TrainConfigError(f"model_kwargs for '{name}': {exc}") from None
    if named:
        assert isinstance(pretrained, str)
        pretrained_sources.load_named(pretrained, name, model, in_chans)
    return DefectNet(model, ok_index, flip_views, defect_score) if defect_map else model


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The input spec of a run: size and channels from the config, normalisation by default.

    Pretrained weights expect ImageNet statistics; from scratch, the edge default is used.
    """
    h, w = cfg.size_hw
    if cfg.mean is not None and cfg.std is not None:
        mean, std = cfg.mean, cfg.std
    elif cfg.pretrained in pretrained_sources.NAMED:
        source = pretrained_sources.NAMED[str(cfg.pretrained)]
        if cfg.channels == 1:  # the stem is summed over RGB: one gray value per pixel
            mean, std = (sum(source.mean) / 3,), (sum(source.std) / 3,)
        else:
            mean, std = source.mean, source.std
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
            resize=cfg.resize,
            orient=cfg.orient,
            illumination=cfg.illumination,
            clahe_clip_limit=cfg.clahe_clip_limit,
            flatfield_sigma=cfg.flatfield_sigma,
        )
    except ValueError as exc:
        raise TrainConfigError(f"preprocessing: {exc}") from None
