"""The one preprocessing function: camera frame (uint8) -> model input (float32, CHW).

Training evaluates through this function and the device runs it, so the two can never
disagree. Its parameters travel in the bundle's manifest as a PreprocessSpec.
numpy and OpenCV only: this module runs on the device.

The steps, in order: colour to the model's channels; orientation (``orient``: ``landscape``
turns a frame taller than wide a quarter turn clockwise, so that a wide input holds every
tile, tall or wide, at the larger scale); geometry (``resize``: ``stretch``
squashes the frame to the input size, ``letterbox`` scales it to fit with its aspect kept
and pads the rest with the mean, so a thin crack on a 2:1 tile stays as thin as it is);
illumination correction of the frame's pixels (``illumination``: ``clahe``, local
histogram equalisation, or ``flatfield``, division by a heavily blurred copy, which takes
out the lighting's brightness and gradients); normalisation by mean and std. ``placement``
gives the geometry alone, so that masks and defect maps map between frame and input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
RESIZES = ("stretch", "letterbox")
ORIENTS = ("keep", "landscape")
ILLUMINATIONS = ("none", "clahe", "flatfield")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a frame becomes a model input. Frames arrive as OpenCV delivers them (BGR or gray)."""

    height: int = 224
    width: int = 224
    channels: int = 1  # 1: gray; 3: RGB channel order, as timm models are trained
    mean: tuple[float, ...] = (0.5,)  # per channel, on the 0..1 scale
    std: tuple[float, ...] = (0.25,)
    interpolation: str = "area"
    resize: str = "stretch"  # or "letterbox": aspect kept, padded with the mean
    orient: str = "keep"  # or "landscape": a portrait frame is turned a quarter clockwise
    illumination: str = "none"  # or "clahe", "flatfield"
    clahe_clip_limit: float = 2.0  # clahe: contrast limit per tile
    clahe_tiles: int = 8  # clahe: tiles along each side
    flatfield_sigma: float = 0.1  # flatfield: Gaussian sigma as a share of the shorter side

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
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {list(RESIZES)}, not {self.resize!r}")
        if self.orient not in ORIENTS:
            raise ValueError(f"orient must be one of {list(ORIENTS)}, not {self.orient!r}")
        if self.illumination not in ILLUMINATIONS:
            raise ValueError(
                f"illumination must be one of {list(ILLUMINATIONS)}, not {self.illumination!r}"
            )
        if self.clahe_clip_limit <= 0 or self.clahe_tiles < 1 or not 0 < self.flatfield_sigma <= 1:
            raise ValueError(
                "clahe_clip_limit must be > 0, clahe_tiles >= 1, flatfield_sigma in (0, 1]"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PreprocessSpec:
        fields = dict(doc)
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)


def decode_image(data: bytes) -> np.ndarray | None:
    """Bytes of an image file -> uint8 gray or BGR as OpenCV gives it, the one decoding the
    dataset, training and the device's replay share (None: not a decodable 8/16-bit image)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype == np.uint16:  # 16-bit: keep the high byte (as lineqc.datasets does)
        image = (image // 256).astype(np.uint8)
    if image.dtype != np.uint8:
        return None
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


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


@dataclass(frozen=True)
class Placement:
    """Where a frame's pixels land in the model input: turned a quarter clockwise first when
    ``turned``, then a ``height`` x ``width`` block at (``top``, ``left``); the rest of the
    input is padding."""

    top: int
    left: int
    height: int
    width: int
    turned: bool = False

    def orient(self, image: np.ndarray) -> np.ndarray:
        """A frame-shaped array (image, mask; HxW or HxWxC) as it enters the input (a turned
        copy is contiguous, as OpenCV needs)."""
        return np.ascontiguousarray(np.rot90(image, k=-1)) if self.turned else image

    def unorient(self, image: np.ndarray) -> np.ndarray:
        """An oriented array (a map over the frame's cells) back in the frame's orientation."""
        return np.ascontiguousarray(np.rot90(image, k=1)) if self.turned else image

    def into_input(self, block: np.ndarray, height: int, width: int) -> np.ndarray:
        """A block of this placement's size (HxW or HxWxC) in a ``height`` x ``width`` input
        whose padding is 0: one geometry for the frame and its mask target."""
        if block.shape[:2] == (height, width):
            return block
        out = np.zeros((height, width, *block.shape[2:]), block.dtype)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = block
        return out


def placement(frame_hw: tuple[int, int], spec: PreprocessSpec) -> Placement:
    """The geometry of ``preprocess`` for a frame of ``frame_hw`` (height, width)."""
    h, w = frame_hw[:2]
    turned = spec.orient == "landscape" and h > w
    if turned:
        h, w = w, h
    if spec.resize == "stretch":
        return Placement(0, 0, spec.height, spec.width, turned)
    scale = min(spec.height / h, spec.width / w)
    ph = min(spec.height, max(1, round(h * scale)))
    pw = min(spec.width, max(1, round(w * scale)))
    return Placement((spec.height - ph) // 2, (spec.width - pw) // 2, ph, pw, turned)


def resize_to(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """cv2.resize to (height, width) that keeps a single channel axis (HxWx1 stays 3-d)."""
    if image.shape[:2] == (height, width):
        return image
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out


def correct_illumination(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The spec's illumination correction of a uint8 HxWxC image (C = 1 or 3), as uint8."""
    if spec.illumination == "none":
        return image
    if spec.illumination == "clahe":
        clahe = cv2.createCLAHE(spec.clahe_clip_limit, (spec.clahe_tiles, spec.clahe_tiles))
        if image.shape[2] == 1:
            return clahe.apply(image[:, :, 0])[:, :, None]
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)  # equalise lightness, keep colour
        lab[:, :, 0] = clahe.apply(lab[:, :, 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    # flatfield: divide by the lighting (a heavy blur), rescaled to mid-grey
    pixels = image.astype(np.float32)
    sigma = spec.flatfield_sigma * min(image.shape[:2])
    light = cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    light = light.reshape(pixels.shape)
    flat = pixels / np.maximum(light, 1.0) * 128.0
    return np.clip(flat + 0.5, 0, 255).astype(np.uint8)


def preprocess(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One uint8 frame -> float32 array of shape (channels, height, width)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    image = to_model_colour(frame, spec.channels)
    place = placement(image.shape[:2], spec)
    image = place.orient(image)
    image = resize_to(image, place.height, place.width, INTERPOLATIONS[spec.interpolation])
    image = correct_illumination(image, spec)
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    body = (image.astype(np.float32) * scale - mean) / std
    out = place.into_input(body, spec.height, spec.width)  # letterbox: padded with the mean
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_batch(frames: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Several frames -> float32 array (N, channels, height, width)."""
    return (
        np.stack([preprocess(f, spec) for f in frames])
        if frames
        else np.zeros((0, spec.channels, spec.height, spec.width), dtype=np.float32)
    )
