"""Hostile images for the tests: a few hundred bytes that declare a huge frame."""

from __future__ import annotations

import struct
import zlib

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


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A real 1 x 1 grey PNG whose header (IHDR, its CRC made right) says ``side`` x
    ``side`` pixels."""
    ok, buf = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", side, side)  # IHDR: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
