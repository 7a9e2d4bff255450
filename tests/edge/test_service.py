"""Running as a systemd service: sd_notify (READY, a watchdog fed while frames progress,
STOPPING), the clean SIGTERM flush, SIGHUP reloads, and the unit `install-service` writes.

systemd itself is not needed: the tests bind the notify socket that systemd would, point
``NOTIFY_SOCKET`` at it and run the real `lineqc edge run` against a real Mosquitto. The
stalled camera is a real MJPEG stream over HTTP (what an IP camera serves) that stops
sending.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lineqc.edge.config import parse_config
from lineqc.edge.service import (
    HOT_RELOADABLE,
    NeedsRestart,
    Notifier,
    NotifyListener,
    UnitOptions,
    Watchdog,
    config_changes,
    unit_text,
    verify_unit,
)
from tests.cameras import MJPEGCamera

# ---- a notify socket, as systemd binds one -----------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifyListener]]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        path = Path("/tmp") / f"lineqc-notify-{uuid.uuid4().hex[:8]}.sock"
    listener = NotifyListener(str(path))
    yield str(path), listener
    listener.close()


# ---- the protocol, in-process ------------------------------------------------------------------


def test_notifier_reaches_a_path_and_an_abstract_socket(notify_socket) -> None:
    path, listener = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "OTHER": "x"}
    notifier = Notifier.from_env(env)
    assert env == {"OTHER": "x"}  # a child process must not speak for the service
    assert notifier.watchdog_s == 3.0
    notifier.ready("starting up")
    assert listener.wait_for(lambda: listener.count("READY") == 1, 5)
    assert listener.with_key("READY")[0][1]["STATUS"] == "starting up"

    name = f"lineqc-test-{uuid.uuid4().hex}"
    abstract = NotifyListener("\0" + name)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).send("WATCHDOG=1")
        assert abstract.wait_for(lambda: abstract.count("WATCHDOG") == 1, 5)
    finally:
        abstract.close()


def test_notifier_off_without_systemd_and_watchdog_only_for_its_pid(tmp_path: Path) -> None:
    quiet = Notifier.from_env({})
    assert not quiet.enabled and not quiet.send("READY=1") and quiet.watchdog_s is None
    other_pid = str(os.getpid() + 1)
    env = {"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000"}
    assert Notifier.from_env({**env, "WATCHDOG_PID": other_pid}).watchdog_s is None
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 1.0
    # a socket nobody listens on: the runtime goes on, the send says it failed
    assert not Notifier.from_env(env).send("READY=1")


def test_watchdog_pings_at_half_the_interval_only_when_frames_progress(notify_socket) -> None:
    path, listener = notify_socket
    now = [100.0]
    dog = Watchdog(Notifier(path, watchdog_s=10.0), clock=lambda: now[0])
    assert not dog.beat(0)  # nothing inspected yet
    assert dog.beat(1)
    assert not dog.beat(2)  # progress, but not yet half an interval later
    now[0] += 5.0
    assert dog.beat(3)
    now[0] += 50.0
    assert not dog.beat(3)  # a stalled pipeline: no frame since the last ping, no ping
    assert dog.beat(4)  # frames again: fed at once
    assert dog.pings == 3
    assert listener.wait_for(lambda: listener.count("WATCHDOG") == 3, 5)
    assert not Watchdog(Notifier(path, watchdog_s=None)).beat(10)  # no WatchdogSec: no pings


# ---- what a reload may change ------------------------------------------------------------------

BASE: dict[str, Any] = {
    "device": {"id": "dev1", "site": "s1", "line": "l1"},
    "camera": {"source": "rtsp://camera/stream"},
    "model": {"bundle": "/opt/b", "public_key": "/etc/k.pub"},
    "outbox": {"path": "/var/lib/lineqc/outbox.sqlite"},
}


def _cfg(**sections: Any) -> Any:
    doc = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(doc, check_files=False)


def test_hot_reloadable_keys_apply_and_others_need_a_restart() -> None:
    old = _cfg()
    hot = _cfg(
        decision={"prob_floor": 0.4, "thresholds": {"scratch": 0.9}},
        sampling={"audit_share": 0.2, "max_per_minute": 10},
        telemetry={"interval_s": 3},
        latency_budget_ms=50,
    )
    assert config_changes(old, hot) == [
        "decision.prob_floor", "decision.thresholds.scratch", "latency_budget_ms",
        "sampling.audit_share", "sampling.max_per_minute", "telemetry.interval_s",
    ]  # fmt: skip
    assert config_changes(old, _cfg()) == []
    with pytest.raises(NeedsRestart) as err:
        config_changes(old, _cfg(model={"threads": 4}, camera={"fps": 5}, sampling={"seed": 1}))
    assert err.value.keys == ["camera.fps", "model.threads"]
    assert "restart" in str(err.value) and "nothing reloaded" in str(err.value)
    for cold in ({"shutdown_flush_s": 9}, {"telemetry": {"window": 64}}, {"mqtt": {"port": 1}}):
        with pytest.raises(NeedsRestart):
            config_changes(old, _cfg(**cold))
    assert "decision" in HOT_RELOADABLE and "model" not in HOT_RELOADABLE


# ---- the unit file -----------------------------------------------------------------------------


def _verify_or_skip(path: Path) -> Any:
    verdict = verify_unit(path)
    if verdict is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return verdict


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    cfg = _cfg(
        outbox={"path": str(tmp_path / "state dir" / "outbox.sqlite")},
        model={"engine_cache": str(tmp_path / "100%engines")},
        shutdown_flush_s=12.5,
    )
    text = unit_text(cfg, Path("/etc/lineqc/dev 1.yaml"), UnitOptions(name="lineqc-edge-dev1"))
    for line in (
        "Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID", "StandardOutput=journal", "User=lineqc",
        "ProtectSystem=strict", "NoNewPrivileges=yes", "TimeoutStopSec=28",
    ):  # fmt: skip
        assert line in text.splitlines(), line
    assert f'ReadWritePaths="-{tmp_path}/state dir" -{tmp_path}/100%%engines' in text
    assert f'{sys.executable} -m lineqc edge run --config "/etc/lineqc/dev 1.yaml"' in text
    unit = tmp_path / "lineqc-edge-dev1.service"
    unit.write_text(text)
    verdict = _verify_or_skip(unit)
    assert verdict.ok, verdict.output


def test_verify_catches_what_systemd_would_ignore_or_refuse(tmp_path: Path) -> None:
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/bin/true\nWatchdogSec=soon\n")
    verdict = _verify_or_skip(unit)
    assert not verdict.ok and "soon" in verdict.output  # systemd would ignore it, exit 0
    unit.write_text("[Service]\nType=notify\nExecStart=/nonexistent/python -m lineqc\n")
    verdict = _verify_or_skip(unit)
    assert not verdict.ok and "/nonexistent/python" in verdict.output


def test_install_service_checks_the_config_then_writes_the_unit(
    edge, lineqc, tmp_path: Path
) -> None:
    cfg = edge.config(1883, shutdown_flush_s=7)
    dest = tmp_path / "units"
    done = lineqc("edge", "install-service", str(cfg), "--dest", str(dest), "--watchdog-s", "20")
    unit = dest / "lineqc-edge-dev1.service"
    assert f"wrote {unit}" in done.stdout
    text = unit.read_text()
    assert "WatchdogSec=20" in text and "TimeoutStopSec=22" in text
    assert f"--config {cfg.resolve()}" in text
    if "not installed here" not in done.stdout:
        assert "systemd-analyze verify: OK" in done.stdout

    dry = lineqc("edge", "install-service", str(cfg), "--dry-run", "--name", "qc.service")
    assert dry.stdout.startswith("# Written by") and "[Service]" in dry.stdout
    assert "Description=lineqc edge inspection, device dev1" in dry.stdout
    assert not (dest / "qc.service").exists()

    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["sampling"] = {"audit_share": 2}
    bad.write_text(yaml.safe_dump(doc))
    refused = lineqc("edge", "install-service", str(bad), "--dest", str(dest), check=False)
    assert refused.returncode == 1
    assert "sampling.audit_share" in refused.stderr and "no unit written" in refused.stderr
    assert [p.name for p in dest.iterdir()] == ["lineqc-edge-dev1.service"]


# ---- the real runtime under a notify socket ----------------------------------------------------


def _start(edge, cfg: Path, socket_path: str, log: Path, watchdog_usec: int | None = None):
    env = {"NOTIFY_SOCKET": socket_path}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    out = open(log, "a")  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(cfg), "--json"],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    out.close()
    edge.procs.append(proc)
    return proc


def _summary(log: Path) -> dict[str, Any]:
    text = log.read_text()
    return json.loads(text[text.rindex("\n{\n") + 1 :])


@pytest.mark.slow
def test_watchdog_starved_while_the_camera_hangs_and_fed_again_once_it_resumes(
    edge, broker, notify_socket, tmp_path: Path
) -> None:
    """The hung stream is reopened while OpenCV's read on it is still blocked; when the
    camera sends again, that read returns (the capture it reads from was released under
    it before: SIGSEGV) and frames flow from the fresh capture."""
    path, listener = notify_socket
    camera = MJPEGCamera(sorted(edge.bundle.images.rglob("*.png"))[:20])
    try:
        cfg = edge.config(
            broker.port, camera.url, camera={"frame_timeout_s": 1.0, "reopen_max_s": 2.0}
        )
        log = tmp_path / "runtime.log"
        proc = _start(edge, cfg, path, log, watchdog_usec=1_000_000)  # a ping every ~0.5 s
        assert listener.wait_for(lambda: listener.count("READY") == 1, 60), log.read_text()
        assert listener.wait_for(lambda: listener.count("WATCHDOG") >= 4, 30), log.read_text()

        def quiet_for(seconds: float) -> bool:
            pings = listener.with_key("WATCHDOG")
            last = pings[-1][0] if pings else 0.0
            return time.monotonic() - last > seconds

        def hangs() -> None:  # capture gets nothing, inference idles
            camera.pause()
            # 3 s is six ping periods: systemd (WatchdogSec=1) would have restarted it
            assert listener.wait_for(lambda: quiet_for(3.0), 20), "pings went on with no frames"
            assert proc.poll() is None, log.read_text()  # restarting is systemd's

        hangs()
        pings = listener.count("WATCHDOG")
        camera.resume()  # the abandoned read returns; frames flow from the fresh capture
        assert listener.wait_for(lambda: listener.count("WATCHDOG") >= pings + 4, 30), (
            log.read_text()
        )
        hangs()  # and stopped while it hangs, a read still blocked
        edge.terminate(proc, timeout=30)
        text = log.read_text()
        assert proc.returncode == 0, text  # -11 was the crash
        assert "no frame for 1 s (hung); reopening" in text
        capture = _summary(log)["capture"]
        assert capture["reopens"] >= 2 and capture["abandoned_reads"] >= 2, capture
        assert listener.count("STOPPING") == 1
    finally:
        camera.close()


@pytest.mark.slow
def test_sigterm_flushes_the_waiting_outbox_within_its_bound_and_exits_0(
    edge, broker_factory, subscriber_factory, notify_socket, tmp_path: Path
) -> None:
    path, listener = notify_socket
    broker = broker_factory(persistence=True)
    sub = subscriber_factory(broker.port)  # a persistent session: it gets what comes later
    broker.stop()  # the broker is away while the device inspects: the outbox fills
    cfg = edge.config(
        broker.port,
        camera={"loop": True, "fps": 20},
        sampling={"audit_share": 0.0},
        shutdown_flush_s=30,
    )
    log = tmp_path / "runtime.log"
    proc = _start(edge, cfg, path, log)
    assert listener.wait_for(lambda: listener.count("READY") == 1, 60), log.read_text()
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert listener.wait_for(lambda: listener.count("STOPPING") == 1, 10), log.read_text()
    status = listener.with_key("STOPPING")[0][1]["STATUS"]
    waiting = int(status.split("(")[1].split()[0])
    assert waiting > 0, status  # messages were still in the outbox at SIGTERM
    broker.start()  # back while the device flushes
    proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    summary = _summary(log)
    assert summary["outbox"] == {**summary["outbox"], "left": 0, "flushed": True}
    uncertain = summary["decisions"].get("uncertain", 0)
    assert uncertain > 0
    assert sub.wait_for(lambda: len(sub.frame_ids()) >= uncertain, 30)
    assert len(sub.frame_ids()) == uncertain


@pytest.mark.slow
def test_sighup_reloads_safe_keys_without_dropping_frames_and_refuses_the_rest(
    edge, broker, subscriber_factory, notify_socket, tmp_path: Path
) -> None:
    path, listener = notify_socket
    sub = subscriber_factory(broker.port)
    cfg = edge.config(broker.port, camera={"loop": True, "fps": 0})  # lockstep: none dropped
    log = tmp_path / "runtime.log"
    proc = _start(edge, cfg, path, log)
    assert listener.wait_for(lambda: listener.count("READY") == 1, 60), log.read_text()
    assert sub.wait_for(lambda: len(sub.docs("result")) > 20, 30)
    assert any(d["verdict"] == "uncertain" for d in sub.docs("result"))
    doc = yaml.safe_load(cfg.read_text())

    def reload(new: dict[str, Any], readies: int) -> None:
        cfg.write_text(yaml.safe_dump(new))
        proc.send_signal(signal.SIGHUP)
        assert listener.wait_for(lambda: listener.count("READY") == readies, 20), log.read_text()

    # 1. hot: no floor, no margin, every class at 0 (nothing is uncertain any more)
    zero = {c: 0.0 for c in ("contamination", "dent", "ok", "scratch")}
    hot = {**doc, "decision": {"prob_floor": 0.0, "margin": 0.0, "thresholds": zero}}
    reload(hot, 2)
    assert listener.count("RELOADING") == 1

    def policy() -> dict[str, Any]:
        return sub.docs("status")[-1]["decision"]

    assert sub.wait_for(lambda: policy()["prob_floor"] == 0.0, 10)
    seen = len(sub.docs("result"))
    assert sub.wait_for(lambda: len(sub.docs("result")) > seen + 20, 30)
    assert all(d["verdict"] != "uncertain" for d in sub.docs("result")[seen + 2 :])

    # 2. cold: a change only a restart applies is refused whole, the running config kept
    reload({**hot, "model": {**doc["model"], "threads": 1}, "latency_budget_ms": 99}, 3)
    # 3. a config that does not validate is refused too
    reload({**hot, "sampling": {"audit_share": 5}}, 4)
    assert policy()["prob_floor"] == 0.0

    # 4. the same through a signed command on the cmd topic: applied, then refused with why
    def command_reply(cmd_id: str) -> dict[str, Any]:
        assert sub.wait_for(lambda: any(r["id"] == cmd_id for r in sub.docs("cmd/reply")), 10)
        return next(r for r in sub.docs("cmd/reply") if r["id"] == cmd_id)

    audit = {**hot, "sampling": {"audit_share": 1.0}}
    cfg.write_text(yaml.safe_dump(audit))
    edge.command(broker.port, "reload_config", id="rc1")
    assert command_reply("rc1")["ok"] is True
    assert sub.wait_for(lambda: sum(d["why"] == "audit" for d in sub.docs("sample")) > 3, 10)
    cfg.write_text(yaml.safe_dump({**audit, "camera": {**doc["camera"], "fps": 5}}))
    edge.command(broker.port, "reload_config", id="rc2")
    reply = command_reply("rc2")
    assert reply["ok"] is False and reply["error"].startswith(
        "reload_config: camera.fps changed, which only a restart applies"
    )
    assert listener.count("READY") == 6

    edge.terminate(proc, timeout=30)
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    assert (
        "config reloaded: decision.margin, decision.prob_floor, decision.thresholds.contamination"
        in text
    )
    assert "config reload refused: model.threads changed, which only a restart" in text
    assert "sampling.audit_share: Input should be less than or equal to 1" in text
    summary = _summary(log)
    assert summary["capture"]["drops"] == 0
    results = sub.docs("result")
    assert sub.wait_for(lambda: len(sub.docs("result")) >= summary["frames"], 10)
    seqs = sorted({d["seq"] for d in sub.docs("result")})
    assert seqs == list(range(summary["frames"])), "a frame went missing across the reloads"
    assert len(results) <= summary["frames"]
