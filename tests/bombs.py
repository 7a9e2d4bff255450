"""Hostile images for the tests: a few hundred bytes that declare a huge frame."""

from __future__ import annotations

import struct

import cv2
import numpy as np

BOMB_SIDE = 30000


def bomb_jpeg(side: int = BOMB_SIDE) -> bytes:
    """A real 16 x 16 JPEG whose frame header (SOF0) says ``side`` x ``side`` pixels: about
    335 bytes that a decoder would expand to ``side`` squared pixels (900 MB at 30000)."""
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)
