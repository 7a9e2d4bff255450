"""The wire format: what the device builds, every reader parses; bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lineqc.edge.sampling import encode_sample
from lineqc.edge.wire import (
    ReloadBundle,
    Result,
    Sample,
    SetThresholds,
    WireError,
    dumps,
    parse_command,
    parse_message,
    result_message,
    sample_message,
    topic,
)


def _sample_doc() -> dict:
    return sample_message(
        why="uncertain", frame_id="d-c-1-0000001", device="d", site="s", line="l", camera="c",
        seq=1, ts=1.5, model_version="3", classes=["ok", "dent"], probabilities=[0.55, 0.45],
        verdict="uncertain", label="ok", confidence=0.55, reason="ambiguous",
    )  # fmt: skip


def test_result_roundtrip() -> None:
    doc = result_message(
        frame_id="f", device="d", camera="c", seq=3, ts=1.25, model_version="1", verdict="ok",
        label="ok", confidence=0.99, reason=None, latency_ms=4.2, sampled=None,
    )  # fmt: skip
    msg = parse_message(dumps(doc))
    assert isinstance(msg, Result) and msg.seq == 3 and msg.verdict == "ok"


def test_sample_with_jpeg_roundtrip_and_size_limit() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
    payload, note = encode_sample(_sample_doc(), frame, 90, 1 << 20)
    assert note is None
    msg = parse_message(payload)
    assert isinstance(msg, Sample) and msg.image is not None
    assert msg.image.jpeg_bytes()[:2] == b"\xff\xd8" and (msg.image.width, msg.image.height) == (
        400,
        300,
    )
    small, note = encode_sample(_sample_doc(), frame, 90, 40_000)
    assert note == "image_reencoded" and len(small) <= 40_000
    assert parse_message(small).image.scale < 1.0
    none, note = encode_sample(_sample_doc(), frame, 90, 1500)
    assert note == "image_refused_oversized"
    msg = parse_message(none)
    assert msg.image is None and "does not fit" in msg.image_error


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"v": 2, "type": "result"}', "wire version 2"),
        (b'{"v": 1, "type": "nonsense"}', "type"),
        (b'{"v": 1, "type": "result", "frame_id": "x"}', "device"),
    ],
)
def test_malformed_messages_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_message(payload)


def test_commands() -> None:
    cmd = parse_command(json.dumps({"v": 1, "cmd": "reload_bundle", "force": True}))
    assert isinstance(cmd, ReloadBundle) and cmd.force
    cmd = parse_command(json.dumps({"v": 1, "cmd": "set_thresholds", "margin": 0.1}))
    assert isinstance(cmd, SetThresholds) and cmd.margin == 0.1
    with pytest.raises(WireError, match="margin"):
        parse_command(json.dumps({"v": 1, "cmd": "set_thresholds", "margin": 7}))
    with pytest.raises(WireError, match="Extra inputs"):
        parse_command(json.dumps({"v": 1, "cmd": "status", "rm": "-rf"}))


def test_topics() -> None:
    assert topic("lineqc/v1/s/l/d", "sample") == "lineqc/v1/s/l/d/sample"
    with pytest.raises(ValueError):
        topic("x", "secret")
