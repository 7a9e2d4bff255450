"""An image's size from its file header, read before anything is decoded.

A few hundred bytes can declare 30000 x 30000 pixels: a decoder would allocate gigabytes to
expand them (a decompression bomb). Every place that decodes an image it did not make (the
replay source, the review collector, the review app) asks ``bounded_size`` first. Pillow
reads the header lazily (``Image.open`` decodes nothing); it knows every format the device
replays and the collector stores.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Far beyond any line camera; the dataset import (lineqc.datasets.validate) bounds the same.
MAX_PIXELS = 40_000_000


class ImageSizeError(ValueError):
    """An image whose header is unreadable or declares more pixels than allowed."""


def bounded_size(source: bytes | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header of an image file (its bytes, or its path); raises
    ImageSizeError when there is no readable header or it declares over ``max_pixels``."""
    if isinstance(source, bytes) and not source:
        raise ImageSizeError("an empty file")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns, then refuses at twice its limit; ours is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # over Pillow's hard limit, far over ours
        raise ImageSizeError(f"declares {_over(max_pixels)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageSizeError(f"no readable image header ({exc})") from None
    if width < 1 or height < 1:
        raise ImageSizeError(f"declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageSizeError(f"declares {width}x{height} pixels, {_over(max_pixels)}")
    return width, height


def _over(max_pixels: int) -> str:
    return f"over the limit of {max_pixels} pixels (refused before decoding)"
