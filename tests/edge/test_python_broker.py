"""The embedded Python broker (amqtt, MQTT 3.1.1): the private broker where Mosquitto is not
installed. Real broker process, real runtime process, real MQTT 3.1.1 subscriber."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from lineqc.edge.broker import BROKER_ENV, PythonBroker, broker_kind, python_broker_available

pytestmark = pytest.mark.skipif(not python_broker_available(), reason="amqtt is not installed")


def test_every_uncertain_frame_reaches_a_subscriber(
    edge, python_broker: PythonBroker, subscriber_factory
) -> None:
    sub = subscriber_factory(python_broker.port, protocol=mqtt.MQTTv311)
    cfg = edge.config(
        python_broker.port,
        mqtt={"protocol": "3.1.1"},
        decision={"prob_floor": 0.9},  # the smoke model is unsure of many frames
        sampling={"audit_share": 0.0},
    )
    proc = edge.run(cfg, "--json", "--max-frames", "60", timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    n = summary["frames"]
    assert n == 60 and summary["outbox"]["left"] == 0, summary
    assert sub.wait_for(lambda: len(sub.frame_ids("result")) >= n, 10)
    results = sub.docs("result")
    uncertain = {d["frame_id"] for d in results if d["verdict"] == "uncertain"}
    assert len({d["frame_id"] for d in results}) == n
    assert uncertain, "no uncertain frame: the test proves nothing"
    assert uncertain == {d["frame_id"] for d in sub.docs("sample") if d["why"] == "uncertain"}
    assert sub.docs("status")[-1]["state"] == "stopped"


def test_private_broker_falls_back_to_the_python_broker(edge, tmp_path: Path) -> None:
    """``--private-broker`` with the Python broker forced: MQTT 3.1.1, everything delivered."""
    cfg = edge.config(1, camera={"fps": 30})  # the port is replaced by the private broker's
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(cfg),
             "--private-broker", "--json", "--max-frames", "45"],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, BROKER_ENV: "python", "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        edge.procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.fullmatch(r"private amqtt on 127\.0\.0\.1:(\d+) \(MQTT 3\.1\.1\)\n", first)
        assert found, first + (tmp_path / "stderr.log").read_text()
        out, _ = proc.communicate(timeout=60)
    log = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 0, log
    assert "embedded Python broker amqtt" in log
    summary = json.loads(out)
    assert summary["frames"] == 45 and summary["outbox"]["left"] == 0, summary
    assert summary["outbox"]["flushed"]


def test_broker_kind_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_ENV, "python")
    assert broker_kind() == "python"
    assert broker_kind("mosquitto") == "mosquitto"
    monkeypatch.setenv(BROKER_ENV, "rabbit")
    with pytest.raises(Exception, match="expected auto, mosquitto or python"):
        broker_kind()
