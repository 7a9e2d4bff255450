"""The publisher's hand-off to the durable outbox: nothing handed over is lost at a stop,
even while samples are still being encoded (a slow encoder)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineqc.edge import publisher as publisher_module
from lineqc.edge.config import parse_config
from lineqc.edge.outbox import Outbox
from lineqc.edge.publisher import PendingSample, Publisher
from lineqc.edge.wire import sample_message


def closed_port() -> int:
    """A loopback port nothing listens on: the publisher keeps trying, nothing is delivered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(i: int) -> PendingSample:
    doc = sample_message(
        why="uncertain", frame_id=f"dev1-cam0-1-{i}", device="dev1", site="s", line="l",
        camera="cam0", seq=i, ts=1790000000.0, model_version="1", classes=["ok", "bad"],
        probabilities=[0.5, 0.5], verdict="uncertain", label="ok", confidence=0.5,
        reason="ambiguous",
    )  # fmt: skip
    return PendingSample(doc, np.full((24, 32), i, np.uint8), 90)


N = 10


def test_a_stop_while_samples_are_encoded_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_encode = publisher_module.encode_sample

    def slow_encode(doc: dict[str, Any], *args: Any) -> Any:
        if doc["seq"] == 0:  # the first sample: encoding it outlasts stop's wait (5 s)
            time.sleep(6.5)
        return real_encode(doc, *args)

    monkeypatch.setattr(publisher_module, "encode_sample", slow_encode)
    cfg = parse_config(
        {
            "device": {"id": "dev1", "site": "s", "line": "l"},
            "camera": {"source": "x"},
            "model": {"bundle": "b", "public_key": "k"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": closed_port(),
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.2,
            },
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        },
        check_files=False,
    )
    outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
    pub = Publisher(cfg, outbox)
    pub.start()
    for i in range(N):
        assert pub.submit("sample", f"f{i}", sample(i))
        assert pub.submit("result", f"f{i}", b'{"v":1}')
    time.sleep(0.5)  # the worker is encoding the first sample
    assert not pub.stop(flush_s=0.2)  # not delivered (no broker) ...
    # ... but every frame is committed by the time stop returns (the process may exit now)
    assert sorted(outbox.keys("sample")) == sorted(f"f{i}" for i in range(N))
    assert len(outbox.keys("result")) == N and outbox.depth == 2 * N
    assert not any(k.startswith("handoff_dropped") for k in pub.counters)
    outbox.close()
