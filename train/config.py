"""The one training config: YAML in, validated, unknown keys rejected with the key named.

``load_config(path, overrides)`` reads the YAML, applies ``--set a.b=value`` overrides (values
parsed as YAML, so ``--set optim.lr=3e-4`` is a float and ``--set augment.enabled=false`` a
bool) and validates the result. The resolved config is what a run saves beside its weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lineqc.errors import LineqcError


class TrainConfigError(LineqcError):
    """A config file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LossConfig(_Strict):
    name: Literal["focal", "ce"] = "ce"
    gamma: float = Field(default=2.0, ge=0)  # focal only; 0 makes focal equal to cross-entropy
    # Per-class weights: null, "balanced" (inverse class frequency, mean 1) or one per class.
    # For focal this is the alpha vector; for ce the class weights.
    class_weights: Literal["balanced"] | list[float] | None = None
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class AugmentConfig(_Strict):
    """Applied to uint8 frames of the train split only; 0 disables an operation.

    With ``resize: stretch`` a random resized crop ends the geometric part (the model's
    input size); with ``letterbox`` the frame keeps its own size through augmentation (a
    random affine: scale, shift, rotation) and the edge preprocessing alone sets the
    geometry, as on the device.
    """

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.7, 1.0)  # random resized crop area; (1, 1): resize only
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    affine_scale: tuple[float, float] = (0.9, 1.1)  # letterbox: zoom range of the affine
    affine_shift: float = Field(default=0.05, ge=0, le=0.5)  # letterbox: shift, share of side
    hflip: float = Field(default=0.5, ge=0, le=1)
    vflip: float = Field(default=0.5, ge=0, le=1)
    rotate_limit: float = Field(default=15.0, ge=0, le=180)  # degrees
    rotate_p: float = Field(default=0.3, ge=0, le=1)  # letterbox: of the whole affine
    brightness_contrast: float = Field(default=0.2, ge=0, le=1)  # +- limit of both
    brightness_contrast_p: float = Field(default=0.5, ge=0, le=1)
    gamma_limit: tuple[float, float] = (80.0, 120.0)  # percent
    gamma_p: float = Field(default=0.3, ge=0, le=1)
    clahe_p: float = Field(default=0.1, ge=0, le=1)
    blur_p: float = Field(default=0.1, ge=0, le=1)
    noise_p: float = Field(default=0.1, ge=0, le=1)
    # the share of OK samples given a labelled defect pasted from a training row's mask
    # (train/copy_paste.py); rows without masks are never donors
    copy_paste: float = Field(default=0.0, ge=0, le=1)


class OptimConfig(_Strict):
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1)  # cosine floor as a share of lr
    grad_clip: float | None = Field(default=1.0, gt=0)  # max global grad norm; null disables
    ema_decay: float | None = Field(default=None, gt=0, lt=1)  # null disables EMA
    # EMA decay ramps up from 0 over the first steps (timm ModelEmaV3 warmup), so the average
    # does not start from the random initial weights
    ema_warmup: bool = False
    # parameter-name prefixes kept frozen (BatchNorm there in eval mode): the pretrained
    # stem and first stages, which cost most of a CPU step at high resolution
    freeze: list[str] = Field(default_factory=list)


class DefectMapConfig(_Strict):
    """A defect-map head trained on the datasets' masks beside the class head."""

    weight: float = Field(default=0.0, ge=0)  # 0: no head; else the map loss's weight
    pos_weight: float = Field(default=10.0, gt=0)  # BCE weight of defect pixels (rare)


class AnomalyConfig(_Strict):
    """An anomaly score from OK frames only (a defect-map model; ``train.anomaly``)."""

    bank_size: int = Field(default=0, ge=0)  # OK patches kept in the memory; 0: no score


class EarlyStoppingConfig(_Strict):
    # "last": the final epoch (with EMA and a cosine schedule, usually the steadiest)
    metric: Literal["macro_f1", "balanced_accuracy", "auroc_defect_vs_ok", "loss", "last"] = (
        "macro_f1"
    )
    patience: int | None = Field(default=None, ge=1)  # epochs without improvement; null: never stop


class DataConfig(_Strict):
    cache: Literal["auto", "always", "never"] = "auto"  # decoded uint8 images in memory
    cache_max_mb: float = Field(default=4096, gt=0)  # "auto" caches when the decoded set fits this
    num_workers: int = Field(default=1, ge=0)
    eval_batch_size: int = Field(default=64, ge=1)


class TrackingConfig(_Strict):
    mlflow: bool = True
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else ./mlruns (a local file store)
    experiment: str = "lineqc"


class TrainConfig(_Strict):
    model: str  # any timm model name
    img_size: int | tuple[int, int]  # square side, or (height, width)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # global: split across DDP processes
    seed: int = 0
    channels: Literal[1, 3] = 1  # model in_chans: 1 gray, 3 RGB
    pretrained: bool | str = False  # true: timm hub weights; a path: a local weights file
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model args
    mean: tuple[float, ...] | None = None  # preprocessing, 0..1 scale; null: per channels
    std: tuple[float, ...] | None = None
    interpolation: Literal["area", "linear", "cubic"] = "area"
    resize: Literal["stretch", "letterbox"] = "stretch"  # letterbox: aspect kept (edge spec)
    orient: Literal["keep", "landscape"] = "keep"  # landscape: portrait frames turned (edge spec)
    illumination: Literal["none", "clahe", "flatfield"] = "none"  # correction in the edge spec
    clahe_clip_limit: float = Field(default=2.0, gt=0)
    flatfield_sigma: float = Field(default=0.1, gt=0, le=1)
    # true: draw each class equally often (with replacement); "sqrt": class frequency to the
    # power 1/2, between natural and balanced (a rare class is seen less often repeated)
    balanced_sampling: bool | Literal["sqrt"] = False
    defect_map: DefectMapConfig = Field(default_factory=DefectMapConfig)
    # Each frame scored as itself and its mirror images, outputs averaged (one batch on the
    # device; 2: also mirrored left-right, 4: also upside down and both). Training and its
    # per-epoch validation see single frames; the final evaluation and the bundle score the
    # views. Needs a defect map (``defect_map.weight`` > 0).
    flip_views: Literal[1, 2, 4] = 1
    # Where the scored defect logit comes from: "head" (the class head, reading the pooled
    # features and the map's evidence) or "map" (the defect map's maximum alone). Training
    # is the same either way. Needs a defect map for "map".
    defect_score: Literal["head", "map"] = "head"
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 GPU, fp32 CPU
    channels_last: bool | Literal["auto"] = "auto"  # auto: on GPU only
    device: str = "auto"  # auto: cuda when available
    data: DataConfig = Field(default_factory=DataConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    progress: bool = True

    @field_validator("img_size")
    @classmethod
    def _size_positive(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        sides = (v, v) if isinstance(v, int) else v
        if min(sides) < 8:
            raise ValueError("sides must be at least 8 pixels")
        return v

    @model_validator(mode="after")
    def _scoring_needs_a_defect_net(self) -> TrainConfig:
        if self.defect_map.weight > 0:
            return self
        if self.flip_views > 1:
            raise ValueError("flip_views > 1 needs a defect-map model (defect_map.weight > 0)")
        if self.defect_score == "map":
            raise ValueError("defect_score 'map' needs a defect-map model (defect_map.weight > 0)")
        return self

    @property
    def scoring(self) -> dict[str, Any]:
        """The values of ``SCORING_KEYS``: how the trained weights are scored."""
        return {key: getattr(self, key) for key in SCORING_KEYS}

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif e["type"] == "missing":
            lines.append(f"missing config key '{key}'")
        elif not key:  # a rule across keys: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise TrainConfigError(f"--set {assignment!r}: expected key=value")
    parts = key.strip().split(".")
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TrainConfigError(
                f"--set {assignment!r}: '{'.'.join(parts[: i + 1])}' is not a section"
            )
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"--set {assignment!r}: value is not valid YAML ({exc})") from None


def from_dict(doc: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as exc:
        raise TrainConfigError(_format_error(exc, source)) from None


def add_overrides_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, for ``load_config``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> TrainConfig:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: not valid YAML ({exc})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping of config keys")
    for assignment in overrides:
        apply_override(doc, assignment)
    return from_dict(doc, str(path))


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys that change how the trained weights are scored, not the weights: a finished run can be
# finished again with other values (``train --resume``), without training it again.
SCORING_KEYS = ("flip_views", "defect_score")


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted names of the keys whose values differ between two configs."""
    fa, fb = _flat(a.to_json()), _flat(b.to_json())
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_json(), sort_keys=False))
