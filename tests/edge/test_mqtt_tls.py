"""MQTT security on a real Mosquitto: TLS with a client certificate per device, the CN as
the username, and firmware_config/mosquitto.acl (the documented ACL) binding each device's
certificate to its own topics. Certificates are made here with ``cryptography``."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lineqc.edge.broker import BrokerTLS, Mosquitto, free_port, mosquitto_binary, wait_for_port
from lineqc.edge.config import DeviceConfig, parse_config
from lineqc.edge.mqtt_login import BrokerUrl, MqttLogin, add_login_args, parse_broker_url
from lineqc.errors import LineqcError
from tests.edge.test_commands import ZERO, _running, _status_after
from tests.edge.test_publisher import result, wait_until
from tests.pki import Fleet, make_fleet

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "firmware_config" / "mosquitto.acl"
CONF = REPO / "firmware_config" / "mosquitto-tls.conf"
SITE, LINE = "plant-a", "line-3"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    # dev1: the device of the `edge` fixture (tests/conftest.py), site1/line1/dev1
    return make_fleet(tmp_path / "pki", "dev-a", "dev-b", "lineqc-monitor", "dev1", "lineqc-fleet")


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


# ---- lineqc edge command (and lineqc fleet) through the TLS broker ------------------------


def _device_tls(fleet: Fleet, name: str) -> dict[str, Any]:
    """The device config's mqtt section: TLS with ``name``'s certificate."""
    ident = fleet.clients[name]
    return {
        "tls": {"ca_file": str(fleet.ca), "cert_file": str(ident.cert), "key_file": str(ident.key)}
    }


def _tls_options(port: int, fleet: Fleet, name: str) -> list[str]:
    ident = fleet.clients[name]
    return [
        "--broker", f"mqtts://127.0.0.1:{port}", "--tls-ca", str(fleet.ca),
        "--tls-cert", str(ident.cert), "--tls-key", str(ident.key),
    ]  # fmt: skip


def _lineqc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lineqc", *args], capture_output=True, text=True, timeout=60
    )


def _command(edge: Any, port: int, fleet: Fleet, name: str, *action: str, cmd_id: str) -> Any:
    """`lineqc edge command` to the `edge` fixture's device, with ``name``'s certificate."""
    return _lineqc(
        "edge", "command", *_tls_options(port, fleet, name), "--device", edge.TARGET,
        "--key", str(edge.bundle.private_key), "--id", cmd_id, "--timeout", "10", *action,
    )  # fmt: skip


ZERO_POLICY = (
    "set-thresholds", "--prob-floor", "0", "--margin", "0",
    *[a for c in ZERO for a in ("--threshold", f"{c}=0")],
)  # fmt: skip


def test_edge_command_reaches_a_device_over_tls_with_the_fleet_certificate(
    edge, tls_broker, fleet, subscriber_factory
) -> None:
    """A real device on the TLS broker with its own certificate (CN dev1); the command sent
    with lineqc-fleet's certificate is applied and its reply comes back. lineqc fleet status
    reads the device's status with the same certificate."""
    sub = subscriber_factory(tls_broker.port, tls=fleet.paho_tls("lineqc-monitor"))
    proc = _running(edge, sub, tls_broker.port, mqtt=_device_tls(fleet, "dev1"))
    n = len(sub.docs("status"))
    sent = _command(edge, tls_broker.port, fleet, "lineqc-fleet", *ZERO_POLICY, cmd_id="t1")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"{edge.TARGET}: set_thresholds t1: done"
    decision = _status_after(sub, n)["decision"]
    assert decision["prob_floor"] == decision["margin"] == 0.0
    assert decision["thresholds"] == ZERO
    (reply,) = sub.docs("cmd/reply")
    assert reply["id"] == "t1" and reply["ok"] is True
    log = tls_broker.log.read_text()
    assert re.search(r"\(p5.*u'lineqc-fleet'\)", log)  # the sender, known by its CN
    # lineqc fleet with the same options: the device's retained status over TLS
    status = _lineqc(
        "fleet", "status", *_tls_options(tls_broker.port, fleet, "lineqc-fleet"), "--json"
    )
    assert status.returncode == 0, status.stderr
    assert [r["device"] for r in json.loads(status.stdout)] == [edge.TARGET]
    edge.terminate(proc)


def test_edge_command_with_a_certificate_not_allowed_to_send_commands_is_refused(
    edge, tls_broker, fleet, subscriber_factory
) -> None:
    """The monitor's and the device's own certificates may not write cmd topics: the broker
    refuses the command (a clear error, exit 2), nothing reaches the device, and its
    policy stays."""
    sub = subscriber_factory(tls_broker.port, tls=fleet.paho_tls("lineqc-monitor"))
    proc = _running(edge, sub, tls_broker.port, mqtt=_device_tls(fleet, "dev1"))
    before = sub.docs("status")[-1]["decision"]
    assert before["thresholds"] != ZERO, before
    for name in ("lineqc-monitor", "dev1"):
        sent = _command(edge, tls_broker.port, fleet, name, *ZERO_POLICY, cmd_id=f"x-{name}")
        assert sent.returncode == 2, (sent.stdout, sent.stderr)
        assert "Not authorized" in sent.stderr and "Traceback" not in sent.stderr, sent.stderr
        assert f"certificate {fleet.clients[name].cert}" in sent.stderr
    time.sleep(0.5)
    assert not [t for t, _, _ in sub.messages if t.endswith("/cmd")]
    assert not sub.docs("cmd/reply")
    log = tls_broker.log.read_text()
    assert re.search(r"Denied PUBLISH from .*'lineqc/v1/site1/line1/dev1/cmd'", log)
    # the fleet's certificate asks for the device's status: the policy it had
    n = len(sub.docs("status"))
    asked = _command(edge, tls_broker.port, fleet, "lineqc-fleet", "status", cmd_id="s1")
    assert asked.returncode == 0, asked.stderr
    assert _status_after(sub, n)["decision"] == before
    assert [r["id"] for r in sub.docs("cmd/reply")] == ["s1"]
    edge.terminate(proc)


# ---- the login options (lineqc.edge.mqtt_login) -------------------------------------------


def _login(*argv: str) -> MqttLogin:
    parser = argparse.ArgumentParser()
    add_login_args(parser)
    return MqttLogin.from_args(parser.parse_args(argv))


def test_broker_addresses() -> None:
    assert parse_broker_url("broker.plant:1884") == BrokerUrl("broker.plant", 1884, False)
    assert parse_broker_url("mqtt://broker.plant:1884") == BrokerUrl("broker.plant", 1884, False)
    assert parse_broker_url("mqtts://broker.plant") == BrokerUrl("broker.plant", 8883, True)
    assert parse_broker_url("mqtts://broker.plant:9883") == BrokerUrl("broker.plant", 9883, True)
    assert str(parse_broker_url("mqtts://broker.plant")) == "mqtts://broker.plant:8883"
    for bad in ("broker.plant", "broker.plant:port", "tcp://h:1883", "h:1883/x"):
        with pytest.raises(LineqcError, match=re.escape(f"--broker {bad!r}")):
            parse_broker_url(bad)


def test_login_options_are_checked_and_name_what_is_wrong(fleet, tmp_path: Path) -> None:
    assert _login("--broker", "127.0.0.1:1883") == MqttLogin(BrokerUrl("127.0.0.1", 1883, False))
    me = fleet.clients["lineqc-fleet"]
    pem = ("--tls-ca", str(fleet.ca), "--tls-cert", str(me.cert), "--tls-key", str(me.key))
    login = _login("--broker", "mqtt://broker.plant:8883", *pem)
    assert login.broker == BrokerUrl("broker.plant", 8883, True)  # the certificate means TLS
    assert (login.tls_ca, login.tls_cert, login.tls_key) == tuple(pem[1::2])
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    login = _login("--broker", "h:1883", "--username", "ops", "--password-file", str(password))
    assert (login.username, login.password, login.broker.tls) == ("ops", "s3cret", False)
    assert "s3cret" not in repr(login) + str(login)
    missing = tmp_path / "nope.pem"
    for argv, message in [
        (("--tls-cert", str(me.cert)), f"--tls-cert {me.cert}: --tls-cert and --tls-key go"),
        (("--tls-key", str(me.key)), f"--tls-key {me.key}: --tls-cert and --tls-key go"),
        (("--tls-ca", str(missing)), f"--tls-ca {missing}: no such file"),
        (("--tls-cert", str(missing), "--tls-key", str(me.key)), f"--tls-cert {missing}: no"),
        (("--password-file", str(missing)), f"--password-file {missing}: No such file"),
        (("--broker", "mqtt://u:pw@h:1883"), "'mqtt://u:***@h:1883': give the user"),
    ]:
        with pytest.raises(LineqcError, match=re.escape(message)):
            _login("--broker", "h:1883", *argv)
    # the same checks, through every tool that reaches a broker: refused before connecting
    for tool in (
        ["edge", "command", "--device", "s/l/d", "--key", "k", "status"],
        ["fleet", "status"],
        ["review", "collect", "--db", str(tmp_path / "review.db")],
    ):
        done = _lineqc(*tool[:2], "--broker", "h:1883", "--tls-ca", str(missing), *tool[2:])
        assert done.returncode == 2 and f"--tls-ca {missing}: no such file" in done.stderr, (
            done.stderr
        )
    assert not (tmp_path / "review.db").exists()
