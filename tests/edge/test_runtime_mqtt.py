"""`lineqc edge run` end to end: real bundle, real Mosquitto, real subscriber, real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lineqc.edge.wire import Sample, parse_message


def test_replay_publishes_results_samples_status_and_telemetry(
    edge, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker.port)
    cfg = edge.config(broker.port, sampling={"audit_share": 1.0, "seed": 0})
    proc = edge.run(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    n = summary["frames"]
    assert n == 120 and summary["ended"] == "replay finished" and summary["outbox"]["left"] == 0
    assert sub.wait_for(lambda: len(sub.docs("result")) >= n, 10)
    results = sub.docs("result")
    for doc in results:
        parse_message(json.dumps(doc))  # every message parses with the one wire definition
    assert {d["seq"] for d in results} == set(range(n))
    samples = [parse_message(json.dumps(d)) for d in sub.docs("sample")]
    uncertain = sum(1 for d in results if d["verdict"] == "uncertain")
    assert sum(1 for s in samples if s.why == "uncertain") == uncertain
    assert all(isinstance(s, Sample) and s.image is not None for s in samples)
    img = cv2.imdecode(np.frombuffer(samples[0].image.jpeg_bytes(), np.uint8), 0)
    assert img is not None and img.shape == (64, 64)
    statuses = sub.docs("status")
    assert statuses[0]["state"] in ("online", "degraded") and statuses[-1]["state"] == "stopped"
    sub.wait_for(lambda: bool(sub.docs("telemetry")), 3)


def test_retained_status_readable_by_mosquitto_sub(edge, broker) -> None:
    cfg = edge.config(broker.port)
    assert edge.run(cfg).returncode == 0
    out = subprocess.run(
        ["mosquitto_sub", "-p", str(broker.port), "-t", "lineqc/v1/+/+/+/status", "-C", "1",
         "-W", "5"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    doc = parse_message(out.stdout.strip())
    assert doc.type == "status" and doc.state == "stopped" and doc.device == "dev1"


def test_sigterm_flushes_and_exits_within_seconds(edge, broker) -> None:
    cfg = edge.config(broker.port, camera={"loop": True, "fps": 50})
    proc = edge.start(cfg)
    time.sleep(4)
    took = edge.terminate(proc)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert "stopped" in out and "outbox: 0 message(s) left" in out


def test_commands_change_thresholds_and_malformed_ones_are_refused(
    edge, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker.port)
    cfg = edge.config(broker.port, camera={"loop": True, "fps": 30})
    proc = edge.start(cfg)
    assert sub.wait_for(lambda: len(sub.docs("result")) > 5, 20)
    edge.publish_command(broker.port, b"{not json")
    edge.command(broker.port, "set_thresholds", id="c0", margin=0.0, thresholds={"rust": 0.5})
    zero = {c: 0.0 for c in ("contamination", "dent", "ok", "scratch")}
    edge.command(
        broker.port, "set_thresholds", id="c1", prob_floor=0.0, margin=0.0, thresholds=zero
    )
    assert sub.wait_for(lambda: len(sub.docs("cmd/reply")) >= 3, 10)
    replies = sub.docs("cmd/reply")
    assert [r["ok"] for r in replies] == [False, False, True]
    assert "not JSON" in replies[0]["error"] and "rust" in replies[1]["error"]
    seen = len(sub.docs("result"))
    assert sub.wait_for(lambda: len(sub.docs("result")) > seen + 10, 10)  # still inspecting
    later = sub.docs("result")[seen + 3 :]
    assert later and all(d["verdict"] != "uncertain" for d in later)  # no floor, no margin
    edge.terminate(proc)


def test_reload_refuses_a_tampered_bundle_and_keeps_inspecting(
    edge, broker, subscriber_factory, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-bundle"
    shutil.copytree(edge.bundle.bundle, bad)
    with open(bad / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    sub = subscriber_factory(broker.port)
    cfg = edge.config(
        broker.port, camera={"loop": True, "fps": 30}, commands={"bundle_dir": str(tmp_path)}
    )
    proc = edge.start(cfg)
    assert sub.wait_for(lambda: len(sub.docs("result")) > 3, 20)
    edge.command(broker.port, "reload_bundle", id="r1", bundle="bad-bundle")
    assert sub.wait_for(lambda: bool(sub.docs("cmd/reply")), 10)
    reply = sub.docs("cmd/reply")[0]
    assert reply["ok"] is False and "does not verify" in reply["error"]
    assert str(tmp_path) not in reply["error"]  # the detail is in the device's log only
    seen = len(sub.docs("result"))
    assert sub.wait_for(lambda: len(sub.docs("result")) > seen + 5, 10)
    edge.terminate(proc)
    assert "model.fp32.onnx was modified" in proc.communicate()[1]


def test_tampered_bundle_at_start_is_a_clear_error(edge, broker, tmp_path: Path) -> None:
    bad = tmp_path / "bad-bundle"
    shutil.copytree(edge.bundle.bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["decision"]["prob_floor"] = 0.0
    (bad / "manifest.json").write_text(json.dumps(manifest))
    proc = edge.run(edge.config(broker.port, model={"bundle": str(bad)}))
    assert proc.returncode == 2
    assert "signature does not match" in proc.stderr and "Traceback" not in proc.stderr


def test_wrong_password_is_reported_and_inspection_goes_on(
    edge, broker_factory, tmp_path: Path
) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "dev1", "right"], check=True)
    broker = broker_factory(extra=f"allow_anonymous false\npassword_file {pwfile}")
    cfg = edge.config(
        broker.port, mqtt={"username": "dev1", "password": "wrong"}, shutdown_flush_s=1
    )
    proc = edge.run(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 120  # inspected every frame
    assert "refused the connection" in proc.stderr
    assert "Not authorized" in proc.stderr or "Bad user name or password" in proc.stderr
    assert summary["outbox"]["left"] > 0  # kept for when the password is fixed


def test_oversized_frames_are_reencoded_or_refused_never_silently_dropped(
    edge, broker_factory, subscriber_factory, tmp_path: Path
) -> None:
    frames = tmp_path / "big"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # noise does not compress: ~1 MB as JPEG
        cv2.imwrite(str(frames / f"f{i}.png"), rng.integers(0, 256, (1000, 1000), dtype=np.uint8))
    broker = broker_factory(extra="max_packet_size 300000")
    sub = subscriber_factory(broker.port)
    cfg = edge.config(
        broker.port, source=str(frames), sampling={"audit_share": 1.0},
        decision={"prob_floor": 0.0, "margin": 0.0},
    )  # fmt: skip
    proc = edge.run(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda: len(sub.docs("sample")) >= 6, 10)
    samples = [parse_message(json.dumps(d)) for d in sub.docs("sample")]
    assert all(s.image is not None and s.image.scale < 1.0 for s in samples)  # re-encoded
    assert json.loads(proc.stdout)["publisher"]["image_reencoded"] == 6
    # a limit no frame fits in: the metadata still goes out, with the reason
    tiny = broker_factory(extra="max_packet_size 5000")
    sub2 = subscriber_factory(tiny.port, client_id="sub2")
    cfg2 = edge.config(
        tiny.port, source=str(frames), sampling={"audit_share": 1.0},
        outbox={"path": str(tmp_path / "o2.sqlite")},
    )  # fmt: skip
    assert edge.run(cfg2).returncode == 0
    assert sub2.wait_for(lambda: len(sub2.docs("sample")) >= 6, 10)
    for s in sub2.docs("sample"):
        assert s["image"] is None and "does not fit" in s["image_error"]


def test_missing_camera_is_reported_in_status_and_retried(edge, broker, subscriber_factory) -> None:
    sub = subscriber_factory(broker.port)
    cfg = edge.config(
        broker.port, source="v4l2://57", camera={"reopen_min_s": 0.2, "reopen_max_s": 0.5}
    )
    proc = edge.start(cfg)
    assert sub.wait_for(
        lambda: any("camera cam0" in p for d in sub.docs("status") for p in d["problems"]), 15
    )
    status = [d for d in sub.docs("status") if d["problems"]][-1]
    assert status["state"] == "degraded" and "cannot open" in status["camera"]["detail"]
    assert proc.poll() is None  # still running, retrying
    edge.terminate(proc)
    assert proc.returncode == 0


def test_a_defect_bundle_sends_its_map_and_anomaly_score(
    tmp_path: Path, defect_bundle, broker, subscriber_factory
) -> None:
    from lineqc.edge.defect_map import decode_png
    from tests.conftest import device_config

    sub = subscriber_factory(broker.port)
    cfg = device_config(
        tmp_path, defect_bundle, broker.port, sampling={"audit_share": 1.0, "seed": 0}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(cfg), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout)["frames"]
    assert sub.wait_for(lambda: len(sub.docs("result")) >= n, 10)
    samples = [parse_message(json.dumps(d)) for d in sub.docs("sample")]
    assert len(samples) >= 10  # audit share 1, within the sampler's caps
    for s in samples:
        assert isinstance(s, Sample) and s.defect_map is not None and s.anomaly is not None
        cells = decode_png(s.defect_map.png_bytes())
        assert cells.shape == (s.defect_map.height, s.defect_map.width) == (8, 8)  # 64 px / 8
    results = sub.docs("result")
    assert all(isinstance(r.get("anomaly"), float) for r in results)
    # the map marks defect frames more than OK frames
    top = {s.frame_id: float(decode_png(s.defect_map.png_bytes()).max()) for s in samples}
    labelled = [(s.label == "ok", top[s.frame_id]) for s in samples]
    ok_peak = np.median([t for is_ok, t in labelled if is_ok])
    defect_peak = np.median([t for is_ok, t in labelled if not is_ok])
    assert defect_peak > ok_peak
