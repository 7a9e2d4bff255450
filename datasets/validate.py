"""Image validation on import: every rejected file gets one reason a person can act on."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Formats a dataset may hold, and the file extensions each may carry.
FORMAT_EXTENSIONS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "BMP": (".bmp",)}
IMAGE_EXTENSIONS = tuple(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)
CHANNELS_BY_MODE = {"1": 1, "L": 1, "I;16": 1, "I": 1, "F": 1, "LA": 2, "P": 3, "RGB": 3}


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000  # a 40 MP frame is already far beyond any line camera
    min_side: int = 8


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    channels: int


class Rejected(Exception):
    """An image that may not enter a dataset. ``reason`` is one of REASONS."""

    REASONS = (
        "zero-size",
        "too-large",
        "unreadable",
        "wrong-format",
        "truncated",
        "too-small",
        "outside-source",  # a symbolic link that leads out of the source folder
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def inspect_image(data: bytes, name: str, limits: Limits = Limits()) -> ImageInfo:
    """Check that ``data`` (the file named ``name``) is a whole, decodable image of sane size.

    Raises Rejected with the first reason found. Dimensions are read from the header before
    anything is decoded, so a decompression bomb is refused without being expanded.
    """
    if not data:
        raise Rejected("zero-size", "the file is empty")
    if len(data) > limits.max_bytes:
        raise Rejected("too-large", f"{len(data)} bytes > limit {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected("unreadable", "not an image in any known format") from None
    except OSError as exc:
        raise Rejected("unreadable", str(exc)) from None
    fmt = img.format or "unknown"
    ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if fmt not in FORMAT_EXTENSIONS:
        raise Rejected("wrong-format", f"{fmt} data; accepted: {', '.join(FORMAT_EXTENSIONS)}")
    if ext not in FORMAT_EXTENSIONS[fmt]:
        raise Rejected("wrong-format", f"{fmt} data in a file named '{ext or '(no extension)'}'")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise Rejected("too-large", f"{width}x{height} px > limit {limits.max_pixels} px")
    if min(width, height) < limits.min_side:
        raise Rejected("too-small", f"{width}x{height} px < {limits.min_side} px side")
    try:
        img.load()  # full decode: a cut-off file fails here
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected("truncated", f"decoding stopped early ({exc})") from None
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise Rejected("truncated", "JPEG end-of-image marker missing")
    channels = CHANNELS_BY_MODE.get(img.mode, len(img.getbands()))
    return ImageInfo(format=fmt, width=width, height=height, channels=channels)
