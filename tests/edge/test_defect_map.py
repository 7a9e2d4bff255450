"""The defect map on the device: the cells over the frame, the PNG a sample carries, and the
wire format's field for it."""

from __future__ import annotations

import base64

import numpy as np

from lineqc.edge.defect_map import decode_png, frame_cells, png
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.edge.wire import defect_map_part, dumps, parse_message, sample_message


def test_frame_cells_drop_the_letterbox_padding() -> None:
    spec = PreprocessSpec(64, 64, 1, resize="letterbox")
    grid = np.zeros((1, 8, 8), np.float32)  # stride 8
    grid[0, 3, 5] = 0.9  # a defect in the frame's band
    cells = frame_cells(grid, (50, 200), spec)  # a 4:1 frame: rows 24..40 of the input
    assert cells.shape == (2, 8)
    assert cells[0, 5] == np.float32(0.9) and cells.sum() == np.float32(0.9)
    stretched = frame_cells(grid, (50, 200), PreprocessSpec(64, 64, 1))
    assert stretched.shape == (8, 8)  # no padding: every cell covers the frame


def test_frame_cells_of_a_turned_frame_are_turned_back() -> None:
    spec = PreprocessSpec(32, 64, 1, resize="letterbox", orient="landscape")
    grid = np.zeros((1, 4, 8), np.float32)  # stride 8; a 128x64 frame fills the input turned
    grid[0, 0, 7] = 0.9  # top right of the input: the frame's top left, turned back
    cells = frame_cells(grid, (128, 64), spec)
    assert cells.shape == (8, 4)  # the frame's own orientation: tall
    assert cells[0, 0] == np.float32(0.9) and cells.sum() == np.float32(0.9)


def test_png_round_trip_and_sample_field() -> None:
    cells = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    data = png(cells)
    np.testing.assert_allclose(decode_png(data), cells, atol=1 / 255)
    doc = sample_message(
        why="uncertain", frame_id="d-c-1-0000001", device="d", site="s", line="l", camera="c",
        seq=1, ts=1.0, model_version="1", classes=["ok", "scratch"], probabilities=[0.4, 0.6],
        verdict="uncertain", label="scratch", confidence=0.6, reason="ambiguous",
        defect_map=defect_map_part(data, 2, 2), anomaly=3.5,
    )  # fmt: skip
    msg = parse_message(dumps(doc))
    assert msg.type == "sample" and msg.defect_map is not None and msg.anomaly == 3.5
    assert (msg.defect_map.width, msg.defect_map.height) == (2, 2)
    assert msg.defect_map.png_bytes() == data == base64.b64decode(doc["defect_map"]["data"])
    del doc["defect_map"], doc["anomaly"]  # an older device: both fields are optional
    older = parse_message(dumps(doc))
    assert older.type == "sample" and older.defect_map is None and older.anomaly is None
