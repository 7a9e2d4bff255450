"""MQTT security on a real Mosquitto: TLS with a client certificate per device, the CN as
the username, and firmware_config/mosquitto.acl (the documented ACL) binding each device's
certificate to its own topics. Certificates are made here with ``cryptography``."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lineqc.edge.broker import BrokerTLS, Mosquitto, free_port, mosquitto_binary, wait_for_port
from lineqc.edge.config import DeviceConfig, parse_config
from tests.edge.test_publisher import result, wait_until
from tests.pki import Fleet, make_fleet

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "firmware_config" / "mosquitto.acl"
CONF = REPO / "firmware_config" / "mosquitto-tls.conf"
SITE, LINE = "plant-a", "line-3"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path / "pki", "dev-a", "dev-b", "lineqc-monitor")


@pytest.fixture
def tls_broker(broker_factory: Callable[..., Mosquitto], fleet: Fleet) -> Mosquitto:
    tls = BrokerTLS(fleet.ca, fleet.server.cert, fleet.server.key)
    return broker_factory(tls=tls, acl_file=ACL, log_all=True)


def device(
    tmp_path: Path, fleet: Fleet, port: int, device_id: str, cert: str | None
) -> DeviceConfig:
    """A device config named ``device_id`` that connects with ``cert``'s certificate."""
    tls: dict[str, Any] = {"ca_file": str(fleet.ca)}
    if cert is not None:
        tls |= {
            "cert_file": str(fleet.clients[cert].cert),
            "key_file": str(fleet.clients[cert].key),
        }
    return parse_config(
        {
            "device": {"id": device_id, "site": SITE, "line": LINE},
            "camera": {"source": "x"},
            "model": {"bundle": "b", "public_key": "k"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "client_id": f"{device_id}-as-{cert}",
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "tls": tls,
            },
            "outbox": {"path": str(tmp_path / f"{device_id}-{cert}.sqlite")},
        },
        check_files=False,
    )


def status(device_id: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"v": 1, "type": "status", "device": device_id, "ts": 1.0, "state": "online"}


def test_a_device_certificate_publishes_only_as_its_own_device(
    tls_broker, fleet, subscriber_factory, publishers, tmp_path: Path
) -> None:
    monitor = subscriber_factory(tls_broker.port, tls=fleet.paho_tls("lineqc-monitor"))
    topic_a = f"lineqc/v1/{SITE}/{LINE}/dev-a"
    topic_b = f"lineqc/v1/{SITE}/{LINE}/dev-b"
    a, box_a = publishers(device(tmp_path, fleet, tls_broker.port, "dev-a", "dev-a"))
    a_as_b, box_a_as_b = publishers(
        device(tmp_path, fleet, tls_broker.port, "dev-b", "dev-a"), status=status("dev-b")
    )
    assert wait_until(lambda: a.connected and a_as_b.connected, 10)
    for i in range(3):
        assert a.submit("result", f"a{i}", result(i))
        assert a_as_b.submit("result", f"b{i}", result(100 + i))
    # device A on its own topics: delivered
    assert wait_until(lambda: box_a.depth == 0, 10)
    assert monitor.wait_for(lambda: len(monitor.docs("result")) == 3, 5)
    # device A's certificate under device B's id: every publish refused (PUBACK 0x87), counted,
    # kept in its outbox, and nothing of it reaches a subscriber (the status neither)
    assert wait_until(lambda: a_as_b.counters["publish_refused"] >= 4, 10)  # 3 results, status
    assert a_as_b.counters["publish_refused"] == a_as_b.counters["publish_refused_not_authorized"]
    assert box_a_as_b.depth == 3 and a_as_b.counters["delivered"] == 0
    assert "refuses publishing on " + topic_b + "/result: Not authorized" in str(a_as_b.last_error)
    time.sleep(0.5)
    topics = {t for t, _, _ in monitor.messages}
    assert topics == {f"{topic_a}/result"}, topics
    log = tls_broker.log.read_text()
    assert re.search(r"as dev-b-as-dev-a \(p5.*u'dev-a'\)", log)  # the CN is the username
    assert re.search(rf"Denied PUBLISH from dev-b-as-dev-a \(.*'{topic_b}/result'", log)
    # device B's own certificate may publish as device B
    b, box_b = publishers(device(tmp_path, fleet, tls_broker.port, "dev-b", "dev-b"))
    assert b.submit("result", "b-own", result(200))
    assert wait_until(lambda: box_b.depth == 0, 10)
    assert monitor.wait_for(
        lambda: any(t == f"{topic_b}/result" for t, _, _ in monitor.messages), 5
    )
    assert b.counters["publish_refused"] == 0


def test_a_client_without_a_certificate_is_refused(
    tls_broker, fleet, publishers, tmp_path: Path
) -> None:
    pub, outbox = publishers(device(tmp_path, fleet, tls_broker.port, "dev-a", None))
    assert pub.submit("result", "x", result(0))
    time.sleep(2.0)
    assert not pub.connected and outbox.depth == 1
    log = tls_broker.log.read_text()
    assert "peer did not return a certificate" in log or "OpenSSL Error" in log, log


def test_the_documented_mosquitto_conf_runs_with_the_documented_acl(
    fleet, tmp_path: Path, publishers
) -> None:
    """firmware_config/mosquitto-tls.conf, its paths pointed at this test's files, starts a
    Mosquitto that takes a device's certificate and refuses it another device's topic."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    swaps = {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/lineqc.acl": str(ACL),
        "/etc/mosquitto/certs/lineqc-ca.crt": str(fleet.ca),
        "/etc/mosquitto/certs/broker.crt": str(fleet.server.cert),
        "/etc/mosquitto/certs/broker.key": str(fleet.server.key),
        "/var/lib/mosquitto/": f"{tmp_path}/",
    }
    text = CONF.read_text()
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text + "user root\n")  # as root, Mosquitto would drop to 'mosquitto'
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, proc=proc), log.read_text()
        own, _ = publishers(device(tmp_path, fleet, port, "dev-a", "dev-a"))
        other, other_box = publishers(device(tmp_path, fleet, port, "dev-b", "dev-a"))
        assert own.submit("result", "x", result(0)) and other.submit("result", "y", result(1))
        assert wait_until(lambda: own.counters["delivered"] == 1, 10), log.read_text()
        assert wait_until(lambda: other.counters["publish_refused"] >= 1, 10)
        assert other_box.depth == 1
    finally:
        proc.terminate()
        proc.wait(10)
