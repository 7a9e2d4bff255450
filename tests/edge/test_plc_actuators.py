"""The reject signal to a PLC: Modbus TCP (pymodbus) and OPC UA (asyncua), against real servers
on loopback, read back on the server's side; outages, deadlines and the fail-safe."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

pytest.importorskip("pymodbus")
pytest.importorskip("asyncua")

from lineqc.edge.actuator import RejectEvent, make_actuator
from lineqc.edge.broker import free_port
from lineqc.edge.config import ActuatorConfig, ConfigError, load_config, parse_config
from lineqc.edge.plc import PlcActuator, decision_number
from lineqc.edge.plcsim import ModbusSim, OpcUaSim
from lineqc.edge.runtime import Runtime
from tests.conftest import device_config

COIL, REGISTER = 3, 10


def event(seq: int, reject: bool) -> RejectEvent:
    return RejectEvent(
        f"dev1-cam0-1a2b-{seq:07d}", "cam0", seq, time.time(),
        "defect" if reject else "ok", "crack" if reject else "ok", 0.9, None, reject,
        time.perf_counter(),
    )  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def modbus_config(sim: ModbusSim, **kw: Any) -> ActuatorConfig:
    return ActuatorConfig(
        kind="modbus",
        modbus={
            "host": "127.0.0.1",
            "port": sim.port,
            "reject_coil": COIL,
            "id_register": REGISTER,
        },
        **{"reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "timeout_s": 0.5, **kw},
    )


def opcua_config(sim: OpcUaSim, **kw: Any) -> ActuatorConfig:
    return ActuatorConfig(
        kind="opcua",
        opcua={"url": sim.url, "verdict_node": sim.verdict_node, "id_node": sim.id_node},
        **{"reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "timeout_s": 1.0, **kw},
    )


@pytest.fixture
def actuators() -> Iterator[Callable[[ActuatorConfig], PlcActuator]]:
    made: list[PlcActuator] = []

    def make(cfg: ActuatorConfig) -> PlcActuator:
        actuator = make_actuator(cfg)
        assert isinstance(actuator, PlcActuator)
        actuator.start()
        made.append(actuator)
        return actuator

    yield make
    for actuator in made:
        actuator.close()


def count(actuator: PlcActuator, key: str) -> int:
    return actuator.counters().get(key, 0)


# ---- Modbus TCP ------------------------------------------------------------------------------


def test_modbus_every_decision_reaches_the_plc(actuators) -> None:
    with ModbusSim() as sim:
        plc = actuators(modbus_config(sim, deadline_ms=2000))
        assert wait_for(lambda: plc.connected)
        for seq in range(10):
            plc.submit(event(seq, reject=seq % 3 == 0))
            assert wait_for(lambda n=seq + 1: count(plc, "plc_writes_ok") == n, 5)
            assert sim.coil(COIL) is (seq % 3 == 0)
            assert sim.number(REGISTER) == seq + 1  # the decision number: frame seq + 1
        assert plc.counters() == {"plc_writes_ok": 10}
        lat = plc.latency()["plc_write"]
        assert lat["n"] == 10 and 0 < lat["p50"] <= lat["p99"] < 500


def test_modbus_outage_gets_the_fail_safe_and_reconnects_on_the_same_port(actuators) -> None:
    sim = ModbusSim().start()
    port = sim.port
    plc = actuators(modbus_config(sim, deadline_ms=1000, fail_safe="reject"))
    try:
        plc.submit(event(0, reject=False))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 1)
        assert sim.coil(COIL) is False and sim.number(REGISTER) == 1
        sim.stop()

        for seq in range(1, 11):  # passes, while the PLC is gone
            plc.submit(event(seq, reject=False))
            time.sleep(0.02)
        assert wait_for(lambda: count(plc, "plc_deadline_missed") == 10, 5), plc.counters()
        c = plc.counters()
        assert c["plc_fail_safe_reject"] == 10 and c["plc_writes_ok"] == 1
        assert not plc.connected and "not connected" in (plc.problem() or "")
        assert c.get("plc_connect_failures", 0) >= 1

        sim = ModbusSim(port=port).start()  # back, where the actuator looks for it
        assert wait_for(lambda: count(plc, "plc_reconnects") == 1, 5), plc.counters()
        # Nothing fresher waits: the PLC rests in the fail-safe, with the last missed id.
        assert wait_for(lambda: count(plc, "plc_fail_safe_written") == 1, 5)
        assert sim.coil(COIL) is True and sim.number(REGISTER) == decision_number(10)
        assert plc.problem() is None

        plc.submit(event(11, reject=False))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 2)
        assert sim.coil(COIL) is False and sim.number(REGISTER) == 12
    finally:
        sim.stop()


def test_modbus_slow_plc_misses_the_deadline_and_rests_in_the_fail_safe(actuators) -> None:
    with ModbusSim() as sim:
        plc = actuators(modbus_config(sim, deadline_ms=150, fail_safe="pass"))
        assert wait_for(lambda: plc.connected)
        sim.delay_s = 0.25  # each request answered 250 ms late: a write takes 500 ms
        plc.submit(event(0, reject=True))
        assert wait_for(lambda: count(plc, "plc_deadline_missed") == 1, 2)
        # Counted at the deadline, while the write is still on the wire.
        assert count(plc, "plc_missed_slow") == 1 and count(plc, "plc_fail_safe_pass") == 1
        assert wait_for(lambda: count(plc, "plc_fail_safe_written") == 1, 5), plc.counters()
        c = plc.counters()
        assert c["plc_writes_late"] == 1 and "plc_writes_ok" not in c
        assert sim.coil(COIL) is False and sim.number(REGISTER) == 1  # the fail-safe: pass
        assert plc.connected  # slow is not broken: no reconnect
        sim.delay_s = 0.0
        plc.submit(event(1, reject=True))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 1)
        assert sim.coil(COIL) is True and sim.number(REGISTER) == 2


def test_modbus_refusal_keeps_the_link_and_says_why(actuators) -> None:
    with ModbusSim(size=8) as sim:  # coil 3 exists, registers 10-11 do not
        plc = actuators(modbus_config(sim, deadline_ms=500))
        plc.submit(event(0, reject=True))
        assert wait_for(lambda: count(plc, "plc_missed_refused") == 1, 5), plc.counters()
        assert plc.connected and count(plc, "plc_reconnects") == 0
        assert "illegal data address" in (plc.problem() or "")


def test_submit_never_waits_for_the_plc() -> None:
    """A PLC that takes the connection and never answers: the worker waits on its write, the
    hot path only queues and returns; beyond the bound the oldest decisions miss."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads
        cfg = ActuatorConfig(
            kind="modbus",
            modbus={"host": "127.0.0.1", "port": silent.getsockname()[1], "reject_coil": 0,
                    "id_register": 0},
            deadline_ms=5_000, queue_size=8, timeout_s=2, reconnect_min_s=5, reconnect_max_s=5,
        )  # fmt: skip
        plc = make_actuator(cfg)
        assert isinstance(plc, PlcActuator)
        plc.start()
        try:
            assert wait_for(lambda: plc.connected, 5)
            plc.submit(event(0, reject=True))  # the worker is now stuck on this write
            time.sleep(0.1)
            t0 = time.perf_counter()
            for seq in range(1, 201):
                plc.submit(event(seq, reject=True))
            took = time.perf_counter() - t0
            assert took < 0.5, took  # 200 decisions; one blocked write alone would take 2 s
            assert count(plc, "plc_missed_queue_full") == 192
        finally:
            plc.close(timeout=10)
    c = plc.counters()
    assert c["plc_deadline_missed"] == 201 == c["plc_fail_safe_reject"], c
    assert "plc_writes_ok" not in c


# ---- OPC UA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict_type", "id_type"), [("Boolean", "UInt32"), ("String", "String"), ("Int16", "Int64")]
)
def test_opcua_every_decision_reaches_the_plc(actuators, verdict_type, id_type) -> None:
    with OpcUaSim(verdict_type=verdict_type, id_type=id_type) as sim:
        plc = actuators(opcua_config(sim, deadline_ms=2000))
        assert wait_for(lambda: plc.connected)
        reject_value = {"Boolean": True, "String": "reject", "Int16": 1}[verdict_type]
        pass_value = {"Boolean": False, "String": "pass", "Int16": 0}[verdict_type]
        for seq in range(6):
            ev = event(seq, reject=seq % 2 == 1)
            plc.submit(ev)
            assert wait_for(lambda n=seq + 1: count(plc, "plc_writes_ok") == n, 5), plc.counters()
            assert sim.value("Reject") == (reject_value if ev.reject else pass_value)
            assert sim.value("PartId") == (ev.frame_id if id_type == "String" else seq + 1)
        assert plc.latency()["plc_write"]["n"] == 6


def test_opcua_outage_gets_the_fail_safe_and_reconnects_on_the_same_port(actuators) -> None:
    sim = OpcUaSim().start()
    port = sim.port
    plc = actuators(opcua_config(sim, deadline_ms=1000, fail_safe="reject"))
    try:
        plc.submit(event(0, reject=False))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 1)
        sim.stop()

        for seq in range(1, 6):
            plc.submit(event(seq, reject=False))
            time.sleep(0.02)
        assert wait_for(lambda: count(plc, "plc_deadline_missed") == 5, 5), plc.counters()
        assert count(plc, "plc_fail_safe_reject") == 5 and not plc.connected

        sim = OpcUaSim(port=port).start()
        assert wait_for(lambda: count(plc, "plc_reconnects") == 1, 10), plc.counters()
        assert wait_for(lambda: count(plc, "plc_fail_safe_written") == 1, 5)
        assert sim.value("Reject") is True and sim.value("PartId") == decision_number(5)

        plc.submit(event(6, reject=False))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 2)
        assert sim.value("Reject") is False and sim.value("PartId") == 7
    finally:
        sim.stop()


def test_opcua_unknown_node_or_wrong_type_is_a_connect_failure(actuators) -> None:
    with OpcUaSim(verdict_type="Double") as sim:
        cases = [
            ("ns=2;s=Nowhere", "BadNodeIdUnknown"),
            (sim.verdict_node, "is Double: Boolean, an integer or String expected"),
        ]
        for verdict_node, why in cases:
            cfg = ActuatorConfig(
                kind="opcua",
                opcua={"url": sim.url, "verdict_node": verdict_node, "id_node": sim.id_node},
                reconnect_min_s=0.05, reconnect_max_s=0.2,
            )  # fmt: skip
            plc = actuators(cfg)
            assert wait_for(lambda p=plc: count(p, "plc_connect_failures") >= 1, 5)
            problem = plc.problem() or ""
            assert not plc.connected and "cannot connect" in problem and why in problem, problem


# ---- config and runtime ----------------------------------------------------------------------


def test_config_requires_the_protocol_section() -> None:
    with pytest.raises(ValueError, match="kind 'modbus' needs its section modbus"):
        ActuatorConfig(kind="modbus")
    with pytest.raises(ValueError, match="section opcua: given, but kind is 'log'"):
        ActuatorConfig(kind="log", opcua={"url": "opc.tcp://x:4840", "verdict_node": "a",
                                          "id_node": "b"})  # fmt: skip
    with pytest.raises(ValueError, match="opc"):
        ActuatorConfig(kind="opcua", opcua={"url": "http://x", "verdict_node": "a", "id_node": "b"})


def test_device_config_error_names_the_key(tmp_path, edge_bundle) -> None:
    path = device_config(
        tmp_path, edge_bundle, free_port(),
        actuator={"kind": "modbus", "modbus": {"host": "plc", "reject_coil": -1, "id_register": 0}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"actuator\.modbus\.reject_coil"):
        load_config(path)


@pytest.mark.slow
def test_runtime_writes_every_decision_and_reports_it(tmp_path, edge_bundle) -> None:
    with ModbusSim() as sim:
        path = device_config(
            tmp_path, edge_bundle, free_port(),
            actuator={"kind": "modbus", "deadline_ms": 1000, "modbus": {
                "host": "127.0.0.1", "port": sim.port, "reject_coil": COIL,
                "id_register": REGISTER}},
            shutdown_flush_s=0,
        )  # fmt: skip
        cfg = parse_config(yaml.safe_load(path.read_text()), base=tmp_path)
        runtime = Runtime(cfg, max_frames=12)
        plc = runtime.actuator
        assert isinstance(plc, PlcActuator)
        plc.start()  # connected before the first frame, as on a line that runs
        assert wait_for(lambda: plc.connected, 5)
        assert runtime.problems() == []
        plc.submit(event(98, reject=False))
        assert wait_for(lambda: count(plc, "plc_writes_ok") == 1, 5)
        tel = runtime.telemetry_message()
        assert tel["counters"]["plc_writes_ok"] == 1 and tel["latency_ms"]["plc_write"]["n"] == 1

        sim.stop()  # the status names the PLC while it is gone
        plc.submit(event(99, reject=True))
        assert wait_for(lambda: count(plc, "plc_deadline_missed") == 1, 5)
        assert any("plc modbus://" in p for p in runtime.problems()), runtime.problems()
        tel = runtime.telemetry_message()
        assert tel["counters"]["plc_fail_safe_reject"] == 1
        sim.start()
        assert wait_for(lambda: count(plc, "plc_fail_safe_written") == 1, 5)
        assert runtime.problems() == []

        submitted: list[RejectEvent] = []
        plc.submit = lambda ev: (submitted.append(ev), PlcActuator.submit(plc, ev))[1]  # type: ignore[method-assign]
        summary = runtime.run()
        assert summary["frames"] == 12 == len(submitted)  # passes too, not only rejects
        assert summary["decisions"].get("defect", 0) == sum(ev.reject for ev in submitted)
        c = summary["actuator"]["counters"]
        assert summary["actuator"]["kind"] == "modbus"
        assert c["plc_writes_ok"] == 13 and c["plc_deadline_missed"] == 1, c
        assert summary["actuator"]["latency_ms"]["plc_write"]["n"] == 13
        assert sim.number(REGISTER) == 12 and submitted[-1].seq == 11  # the last frame
        assert sim.coil(COIL) is submitted[-1].reject


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_bench_reports_decision_to_plc_latency(lineqc, edge_bundle, protocol) -> None:
    proc = lineqc(
        "edge", "bench", "--bundle", str(edge_bundle.bundle), "--source",
        str(edge_bundle.images / "**" / "*.png"), "--frames", "40", "--no-baseline",
        "--broker", "none", "--plc", protocol, "--plc-deadline-ms", "1000", "--json",
    )  # fmt: skip
    r = json.loads(proc.stdout)
    p = r["plc"]
    assert p["protocol"] == protocol and p["server"].endswith("on loopback")
    assert p["writes_ok"] == r["frames"] == 40 and p["deadline_missed"] == 0, p
    assert 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p99"] < 1000


@pytest.mark.slow
def test_edge_run_prints_the_plc_figures(tmp_path, edge_bundle, lineqc) -> None:
    with ModbusSim() as sim:
        path = device_config(
            tmp_path, edge_bundle, free_port(),
            actuator={"kind": "modbus", "deadline_ms": 5000, "modbus": {
                "host": "127.0.0.1", "port": sim.port, "reject_coil": COIL,
                "id_register": REGISTER}},
            shutdown_flush_s=0,
        )  # fmt: skip
        proc = lineqc("edge", "run", "--config", str(path), "--max-frames", "20")
        assert sim.number(REGISTER) == 20
    line = next(x for x in proc.stdout.splitlines() if x.startswith("plc (modbus)"))
    assert "written in time" in line and "decision->PLC p50" in line, line
    written = int(line.split(": ", 1)[1].split()[0])
    assert 1 <= written <= 20  # the first frames may come before the connection
