"""The defect map a model may output beside its logits, mapped back onto the frame.

A DefectNet's ONNX file has a second output ``defect_map``: per-cell defect probability,
N x 1 x (H / stride) x (W / stride) over the *model input*. With letterboxing the input also
holds padding, so ``frame_cells`` cuts out the cells that cover the frame itself (turned back
when the input holds the frame turned): drawn stretched over the frame, they show where the
model saw defects. ``png`` makes the small 8-bit image that a ``sample`` message carries
(value / 255 = probability).
numpy and OpenCV only: this module runs on the device.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .preprocess import PreprocessSpec, placement


def frame_cells(
    defect_map: np.ndarray, frame_hw: tuple[int, int], spec: PreprocessSpec
) -> np.ndarray:
    """The cells of one map (h x w, or 1 x h x w) that cover a frame of ``frame_hw``."""
    h, w = defect_map.shape[-2:]
    cells = np.asarray(defect_map, dtype=np.float32).reshape(h, w)
    stride = spec.height / cells.shape[0]
    place = placement(frame_hw, spec)
    top, left = int(place.top / stride), int(place.left / stride)
    bottom = max(top + 1, math.ceil((place.top + place.height) / stride))
    right = max(left + 1, math.ceil((place.left + place.width) / stride))
    return place.unorient(cells[top:bottom, left:right])


def png(cells: np.ndarray) -> bytes:
    """8-bit grey PNG of probabilities in [0, 1] (value / 255 = probability)."""
    image = np.clip(np.rint(np.asarray(cells, np.float32) * 255.0), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("OpenCV could not encode the defect map as PNG")
    return bytes(data)


def decode_png(data: bytes) -> np.ndarray:
    """Probabilities (float32, h x w) from a map PNG; raises ValueError if it is none."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("not a PNG defect map")
    return image.astype(np.float32) / 255.0
