"""The one preprocessing function: camera frame (uint8) -> model input (float32, CHW).

Training evaluates through this function and the device runs it, so the two can never
disagree. Its parameters travel in the bundle's manifest as a PreprocessSpec.
numpy and OpenCV only: this module runs on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a frame becomes a model input. Frames arrive as OpenCV delivers them (BGR or gray)."""

    height: int = 224
    width: int = 224
    channels: int = 1  # 1: gray; 3: RGB channel order, as timm models are trained
    mean: tuple[float, ...] = (0.5,)  # per channel, on the 0..1 scale
    std: tuple[float, ...] = (0.25,)
    interpolation: str = "area"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s) each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size {self.height}x{self.width} is too small")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PreprocessSpec:
        fields = dict(doc)
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)


def to_model_colour(frame: np.ndarray, channels: int) -> np.ndarray:
    """Convert a gray, BGR or BGRA uint8 frame to the model's channel layout (HxWxC)."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a gray or BGR(A) frame, got shape {frame.shape}")
    have = frame.shape[2]
    if channels == 1:
        if have == 1:
            return frame
        code = cv2.COLOR_BGR2GRAY if have == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(frame, code)[:, :, None]
    if have == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB if have == 3 else cv2.COLOR_BGRA2RGB)


def preprocess(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One uint8 frame -> float32 array of shape (channels, height, width)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    image = to_model_colour(frame, spec.channels)
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(
            image, (spec.width, spec.height), interpolation=INTERPOLATIONS[spec.interpolation]
        )
        if image.ndim == 2:  # cv2.resize drops a single channel axis
            image = image[:, :, None]
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = (image.astype(np.float32) * scale - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_batch(frames: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several frames -> float32 array (N, channels, height, width)."""
    return (
        np.stack([preprocess(f, spec) for f in frames])
        if frames
        else np.zeros((0, spec.channels, spec.height, spec.width), dtype=np.float32)
    )
