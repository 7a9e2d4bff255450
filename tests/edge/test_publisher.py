"""The publisher's hand-off to the durable outbox: nothing handed over is lost at a stop,
even while samples are still being encoded (a slow encoder)."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineqc.edge import publisher as publisher_module
from lineqc.edge.config import DeviceConfig, parse_config
from lineqc.edge.outbox import Outbox
from lineqc.edge.publisher import PendingSample, Publisher
from lineqc.edge.wire import sample_message
from tests.mqtt_proxy import MqttProxy, Publish

ROOT = "lineqc/v1/s/l/dev1"


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


def config(tmp_path: Path, port: int, device: str = "dev1", **mqtt: Any) -> DeviceConfig:
    return parse_config(
        {
            "device": {"id": device, "site": "s", "line": "l"},
            "camera": {"source": "x"},
            "model": {"bundle": "b", "public_key": "k"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.2,
                **mqtt,
            },
            "outbox": {"path": str(tmp_path / f"{device}-outbox.sqlite")},
        },
        check_files=False,
    )


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def result(i: int) -> bytes:
    return json.dumps({"v": 1, "type": "result", "frame_id": f"f{i}"}).encode()


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
    cfg = config(tmp_path, closed_port())
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


def test_a_disconnect_sends_each_message_in_flight_exactly_once_more(
    broker, subscriber_factory, publishers, tmp_path: Path
) -> None:
    """One retransmission layer: a cut with 20 results and a command reply in flight (the
    broker has them, its PUBACKs held back) sends each once more after the reconnect. paho
    re-sending its copies and the worker re-publishing the rows made it three."""
    sub = subscriber_factory(broker.port)
    proxy = MqttProxy(broker.port)
    try:
        pub, outbox = publishers(config(tmp_path, proxy.port, max_inflight=64))
        assert wait_until(lambda: pub.connected, 10)
        proxy.hold.set()  # the broker's PUBACKs are dropped from here on
        n = 20
        for i in range(n):
            assert pub.submit("result", f"f{i}", result(i))
        reply = b'{"v":1,"type":"command_reply","id":"c1"}'
        pub.publish_direct("cmd/reply", json.loads(reply), qos=1)  # paho's alone, no outbox

        def sent(p: Publish) -> bool:
            return p.topic in (f"{ROOT}/result", f"{ROOT}/cmd/reply")

        assert proxy.wait_for(lambda: sum(proxy.count(sent).values()) == n + 1, 10)
        time.sleep(0.3)
        assert outbox.depth == n and pub.stats()["inflight"] == n  # all unacknowledged
        proxy.cut()
        proxy.hold.clear()
        assert wait_until(lambda: outbox.depth == 0, 20), pub.stats()
        time.sleep(1.0)  # room for a third copy to show up
        counts = proxy.count(sent)
        assert counts == Counter({**{result(i): 2 for i in range(n)}, reply: 2})
        assert proxy.connects == 2
        assert pub.counters["republished"] == n and pub.counters["delivered"] == n
        # what the broker forwarded: every copy it received, no more
        assert sub.wait_for(lambda: len(sub.docs("result")) >= 2 * n, 5)
        time.sleep(0.3)
        arrived = Counter(d["frame_id"] for d in sub.docs("result"))
        assert arrived == Counter({f"f{i}": 2 for i in range(n)})
        assert len(sub.docs("cmd/reply")) == 2
    finally:
        proxy.close()


def test_a_refused_publish_backs_off_is_counted_and_goes_once_allowed(
    broker_factory, subscriber_factory, publishers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Mosquitto ACL refusing the result topic answers PUBACK 0x87: the rows stay in the
    outbox and the topic is retried after 0.2, 0.4, 0.8, 0.8 ... s instead of at once in a
    loop; every refusal is counted; samples (allowed) go meanwhile; once the ACL allows the
    topic the results arrive, once each."""
    monkeypatch.setattr(publisher_module, "REFUSED_RETRY_MIN_S", 0.2)
    monkeypatch.setattr(publisher_module, "REFUSED_RETRY_MAX_S", 0.8)
    acl = tmp_path / "acl"
    acl.write_text(f"topic read lineqc/#\ntopic write {ROOT}/sample\n")  # anonymous clients
    broker = broker_factory(acl_file=acl, log_all=True)
    sub = subscriber_factory(broker.port)
    pub, outbox = publishers(config(tmp_path, broker.port))
    assert wait_until(lambda: pub.connected, 10)
    n = 5
    for i in range(n):
        assert pub.submit("result", f"f{i}", result(i))
    assert pub.submit("sample", "s0", sample(0))
    assert sub.wait_for(lambda: len(sub.docs("sample")) == 1, 10)  # another topic: not held
    time.sleep(3.0)
    held = pub._refused[f"{ROOT}/result"]
    if held.until - time.monotonic() < 0.3:  # read the counts between two rounds
        time.sleep(max(held.until - time.monotonic(), 0) + 0.3)
    refused = pub.counters["publish_refused"]
    denied = broker.log.read_text().count(f"'{ROOT}/result'")  # each PUBLISH the broker denied
    # rounds at about 0, 0.2, 0.6, 1.4, 2.2, 3.0 s: 5 refusals each (a tight loop: thousands)
    assert 3 * n <= refused <= 8 * n, refused
    assert denied == refused == pub.counters["publish_refused_not_authorized"]
    assert outbox.depth == n and not sub.docs("result")
    assert pub.stats()["refused_topics"] == 1
    assert pub.last_error is not None
    assert f"refuses publishing on {ROOT}/result: Not authorized" in pub.last_error
    assert pub.counters["republished"] == refused - n  # every round after the first

    acl.write_text(f"topic read lineqc/#\ntopic write {ROOT}/#\n")
    broker.reload()
    assert wait_until(lambda: outbox.depth == 0, 10)
    assert sub.wait_for(lambda: len(sub.docs("result")) == n, 5)
    time.sleep(0.3)
    assert sorted(d["frame_id"] for d in sub.docs("result")) == [f"f{i}" for i in range(n)]
    assert pub.last_error is None and pub.stats()["refused_topics"] == 0
    assert pub.counters["delivered"] == n + 1
