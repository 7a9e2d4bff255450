"""Content-addressed image files inside a dataset folder, and reading them back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lineqc.edge.preprocess import decode_image

from .manifest import DatasetError, Record

CANONICAL_EXTENSION = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp"}


def image_relpath(sha256: str, fmt: str) -> str:
    return f"images/{sha256[:2]}/{sha256}{CANONICAL_EXTENSION[fmt]}"


def mask_relpath(sha256: str) -> str:
    return f"masks/{sha256[:2]}/{sha256}.png"


def decode(data: bytes, name: str) -> np.ndarray:
    """Bytes of a validated image -> uint8 array (HxW gray or HxWx3 BGR), decoded as the
    device decodes (``lineqc.edge.preprocess.decode_image``)."""
    image = decode_image(data)
    if image is None:
        raise DatasetError(f"{name}: OpenCV cannot decode this image")
    return image


def read_image(root: Path | str, record: Record) -> np.ndarray:
    """The image of a manifest row, decoded to uint8 (gray HxW or BGR HxWx3)."""
    path = Path(root) / record.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image of row {record.id} ({exc})") from None
    return decode(data, str(path))


def read_mask(root: Path | str, record: Record) -> np.ndarray | None:
    """The defect mask of a row as a uint8 HxW array (nonzero: defect) at the image's size,
    or None when the row has none."""
    if not record.mask_path:
        return None
    path = Path(root) / record.mask_path
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"{path}: cannot read the mask of row {record.id}")
    if mask.shape != (record.height, record.width):
        mask = cv2.resize(mask, (record.width, record.height), interpolation=cv2.INTER_NEAREST)
    return mask
