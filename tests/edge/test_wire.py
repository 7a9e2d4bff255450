"""The wire format: what the device builds, every reader parses; bad input is refused."""

from __future__ import annotations

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
    parse_signed_command,
    result_message,
    sample_message,
    signed_command,
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
    base = {"target": "s/l/d", "seq": 1, "ts": 1.0}
    cmd = parse_command(dumps({**base, "cmd": "reload_bundle", "downgrade_to": "3"}))
    assert isinstance(cmd, ReloadBundle) and cmd.downgrade_to == "3"
    cmd = parse_command(dumps({**base, "cmd": "set_thresholds", "margin": 0.1}))
    assert isinstance(cmd, SetThresholds) and cmd.margin == 0.1
    with pytest.raises(WireError, match="margin"):
        parse_command(dumps({**base, "cmd": "set_thresholds", "margin": 7}))
    with pytest.raises(WireError, match="Extra inputs"):
        parse_command(dumps({**base, "cmd": "status", "rm": "-rf"}))
    with pytest.raises(WireError, match="Extra inputs"):  # a flag is no downgrade licence
        parse_command(dumps({**base, "cmd": "reload_bundle", "force": True}))
    with pytest.raises(WireError, match="seq"):  # no command without its counter
        parse_command(dumps({"cmd": "status", "target": "s/l/d", "ts": 1.0}))


def test_command_envelope() -> None:
    data, sig = b'{"cmd":"status"}', b"\x01" * 64
    assert parse_signed_command(dumps(signed_command(data, sig))) == (data, sig)
    with pytest.raises(WireError, match="command version"):  # the unsigned v1 format
        parse_signed_command(dumps({"v": 1, "cmd": "status", "id": "c1"}))
    with pytest.raises(WireError, match="sig"):
        parse_signed_command(dumps({"v": 2, "command": "e30="}))
    with pytest.raises(WireError, match="base64"):
        parse_signed_command(dumps({"v": 2, "command": "e30=", "sig": "not base64!"}))


def test_topics() -> None:
    assert topic("lineqc/v1/s/l/d", "sample") == "lineqc/v1/s/l/d/sample"
    with pytest.raises(ValueError):
        topic("x", "secret")
