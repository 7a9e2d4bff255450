"""Fleet monitoring end to end, every part real: `lineqc edge run` devices publish to
Mosquitto, `lineqc review collect` keeps rollups, scores drift against the bundle's training
reference and publishes alarms on the alert topic; `lineqc review serve` shows them on the
line-health page and on /metrics (parsed with Prometheus' own text parser). The
false-reject and escape estimates come from audited frames inspectors labelled."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from lineqc.edge import drift
from lineqc.edge.broker import Mosquitto
from lineqc.edge.wire import Alert, dumps, parse_message, result_message
from lineqc.review.app import create_app
from lineqc.review.monitor import Rate, audit_estimates, wilson
from lineqc.review.queue import record_answer
from lineqc.review.store import Alarm, Frame, Store, User, set_setting
from tests.conftest import EdgeKit, Subscriber
from tests.review.kit import review_serve, wire_sample
from tests.review.test_collector import publish
from tests.review.test_loop import sign_in

GAMMA = 0.5  # the shifted camera's lighting: every level raised (a brighter lamp)


def relit(src: Path, dst: Path, gamma: float) -> Path:
    """The same session's frames with their lighting changed (a gamma curve on each)."""
    lut = np.round((np.arange(256) / 255.0) ** gamma * 255).astype(np.uint8)
    for path in src.rglob("*.png"):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(out), cv2.LUT(image, lut))
    return dst


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus' parser over a scrape: sample name -> (labels, value)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


def one(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    hits = [v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (labels, samples)
    return hits[0]


@pytest.mark.slow
def test_the_relit_camera_raises_a_drift_alarm_and_the_other_does_not(
    tmp_path: Path,
    edge: EdgeKit,
    broker_factory: Callable[..., Mosquitto],
    subscriber_factory: Callable[..., Subscriber],
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    broker = broker_factory()
    manifest = json.loads((edge.bundle.bundle / "manifest.json").read_text())
    assert manifest["drift_reference"]["split"] == "train"  # the export wrote it
    config = tmp_path / "monitor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "evaluate_every_s": 600,  # judged once all arrived: at the collector's exit
                "bundles": [str(edge.bundle.bundle)],
                "defaults": {"min_frames": 100, "uncertain_share": None},
                "lines": {"site1/line1": {"drift_psi": 0.25}},
            }
        )
    )
    db = ["--db", str(tmp_path / "review.db"), "--images", str(tmp_path / "images")]
    collect = [
        "review", "collect", "--broker", f"mqtt://127.0.0.1:{broker.port}", *db,
        "--group", "", "--client-id", "monitor", "--monitor-config", str(config),
    ]  # fmt: skip
    lineqc(*collect, "--exit-idle", "0.5")  # opens the persistent session

    # Two cameras replay the same session; the second under changed lighting.
    sources = {
        "dev1": edge.bundle.images,
        "dev2": relit(edge.bundle.images, tmp_path / "relit", GAMMA),
    }
    inspected = {}
    for device, images in sources.items():
        kit = EdgeKit(tmp_path / device, edge.bundle)
        kit.tmp.mkdir()
        cfg = kit.config(broker.port, f"{images}/**/*.png", device={"id": device})
        run = kit.run(cfg, "--json")
        assert run.returncode == 0, run.stderr
        inspected[device] = json.loads(run.stdout)["frames"]
    alerts = subscriber_factory(broker.port, client_id="alerts", topic="lineqc/v1/+/+/+/alert")
    done = lineqc(*collect, "--exit-idle", "3")
    assert "alerts 1" in done.stdout, done.stdout + done.stderr

    fired = [parse_message(json.dumps(d)) for d in alerts.docs("alert")]
    assert all(isinstance(a, Alert) for a in fired)
    assert [(a.device, a.camera, a.alarm, a.state) for a in fired] == [
        ("dev2", "cam0", "drift", "firing")
    ]
    store = Store(db[1], db[3])
    with store.session() as s:
        alarms = {(a.device, a.alarm): a for a in s.scalars(select(Alarm))}
    store.close()
    assert alarms[("dev2", "drift")].state == "firing"
    assert alarms[("dev1", "drift")].state == "ok"
    assert alarms[("dev1", "drift")].value < 0.25 < alarms[("dev2", "drift")].value

    lineqc("review", "add-user", "ann", "--password-stdin", *db, input="ann-password-1\n")
    with review_serve([*db, "--monitor-config", str(config)], tmp_path / "serve.log") as url:
        scrape = httpx.get(url.rstrip("/") + "/metrics", timeout=30)
        page = sign_in(url, "ann", "ann-password-1").get("/health")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    m = metric_samples(scrape.text)
    for device, frames in inspected.items():
        total = sum(v for lab, v in m["lineqc_camera_frames_total"] if lab["device"] == device)
        assert total == frames  # every result counted once
        assert one(m["lineqc_alarm_firing"], device=device, alarm="drift") == (device == "dev2")
    psi = {
        d: one(m["lineqc_camera_drift_psi"], device=d, camera="cam0", reference="bundle")
        for d in sources
    }
    assert psi["dev1"] < 0.25 < psi["dev2"]
    assert one(m["lineqc_camera_latency_ms"], device="dev1", quantile="0.99") > 0

    assert page.status_code == 200
    assert 'data-alarm="site1/line1/dev2/cam0/drift"' in page.text
    assert "site1/line1/dev1/cam0/drift" not in page.text
    assert page.text.count("against the bundle&#39;s training split") == 2
    assert page.text.count('<svg class="plot"') == 8  # four plots per camera


def test_the_false_reject_interval_holds_the_true_rate(
    broker_factory: Callable[..., Mosquitto],
    db_url: str,
    tmp_path: Path,
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A line of 3000 frames with known truth; the device's audit sample (10% of them) goes
    over MQTT to the collector, inspectors label it: the 95% intervals of the false-reject
    and escape rates hold the line's true rates, /metrics says so, and the collector's
    alarm fires where the interval lies above the line's threshold."""
    # The broker keeps all of them for the collector's session (its default bound is 1000).
    broker = broker_factory(extra="max_queued_messages 10000")
    rng = random.Random(7)
    population = []
    for seq in range(3000):
        ok = rng.random() < 0.7
        rejected = rng.random() < (0.05 if ok else 0.8)
        population.append((seq, ok, rejected))
    rejected = [p for p in population if p[2]]
    passed = [p for p in population if not p[2]]
    true_fr = sum(ok for _, ok, _ in rejected) / len(rejected)
    true_escape = sum(not ok for _, ok, _ in passed) / len(passed)

    store = Store(db_url, tmp_path / "images")
    with store.session() as s:
        set_setting(s, "double_review_share", 0.0)  # one inspector's answer is final
        s.add(User(name="ann", password_hash="-", created_at=1.0))
    ts = 1790000000.0
    results, samples, truth = [], [], {}
    for seq, ok, rej in population:
        fid = f"dev1-cam0-1-{seq}"
        audit = rng.random() < 0.1
        verdict, label = ("defect", "scratch") if rej else ("ok", "ok")
        results.append(
            dumps(
                result_message(
                    frame_id=fid, device="dev1", camera="cam0", seq=seq, ts=ts + seq * 0.1,
                    model_version="m1", verdict=verdict, label=label, confidence=0.99,
                    reason=None, latency_ms=5.0, sampled="audit" if audit else None,
                    brightness=100.0,
                )
            )
        )  # fmt: skip
        if audit:
            probs = [0.99, 0.005, 0.005] if not rej else [0.005, 0.99, 0.005]
            sample = wire_sample(
                fid, seq=seq, ts=ts + seq * 0.1, why="audit", verdict=verdict,
                probabilities=probs, reason=None,
            )  # fmt: skip
            samples.append(dumps(sample.model_dump()))
            truth[fid] = "ok" if ok else "scratch"
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"defaults": {"false_reject_rate": 0.05, "escape_rate": 0.2}}))
    collect = [
        "review", "collect", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", db_url,
        "--images", str(tmp_path / "images"), "--group", "", "--client-id", "fr",
        "--monitor-config", str(config),
    ]  # fmt: skip
    lineqc(*collect, "--exit-idle", "0.5")  # opens the persistent session
    publish(broker.port, results, topic="lineqc/v1/site1/line1/dev1/result")
    publish(broker.port, samples, topic="lineqc/v1/site1/line1/dev1/sample")
    done = lineqc(*collect, "--exit-idle", "2")
    assert f"stored {len(samples)}," in done.stdout, done.stdout
    assert "monitored 3000" in done.stdout

    with store.session() as s:  # the inspector labels every audited frame with its truth
        user = s.scalar(select(User.id))
        frames = {f.frame_id: f.id for f in s.scalars(select(Frame))}
    for fid, label in truth.items():
        record_answer(store, user, frames[fid], label)
    with store.session() as s:
        est = audit_estimates(s)[("dev1", "cam0")]
    fr, esc = est.false_reject, est.escape
    assert fr.n == sum(1 for f in truth if int(f.rsplit("-", 1)[1]) in {p[0] for p in rejected})
    lo, hi = fr.interval
    assert lo <= true_fr <= hi, (fr, true_fr)
    lo_e, hi_e = esc.interval
    assert lo_e <= true_escape <= hi_e, (esc, true_escape)
    assert lo > 0.05  # above the line's threshold: the collector's next evaluation fires it

    again = lineqc(*collect, "--exit-idle", "0.5")
    assert "alerts 1" in again.stdout, again.stdout + again.stderr
    with store.session() as s:
        alarm = s.scalar(select(Alarm).where(Alarm.alarm == "false_reject"))
        assert alarm is not None and alarm.state == "firing"
        assert f"{fr.k} of {fr.n} audited" in alarm.detail

    with TestClient(create_app(store)) as client:
        m = metric_samples(client.get("/metrics").text)
    store.close()
    rate = m["lineqc_camera_false_reject_rate"]
    assert (
        one(rate, device="dev1", bound="lower")
        <= true_fr
        <= one(rate, device="dev1", bound="upper")
    )
    assert one(rate, device="dev1", bound="estimate") == pytest.approx(fr.value)


def test_psi_and_wilson_on_known_cases() -> None:
    """The two statistics against values worked out by hand."""
    same = [0] * drift.BINS
    same[30] = 100
    assert drift.psi(same, same) == 0.0
    moved = [0] * drift.BINS
    moved[40] = 100
    assert drift.psi(same, moved) > 5  # everything left the reference's range
    lo, hi = wilson(10, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0552, 0.1744)  # the textbook 10/100 interval
    assert Rate(0, 0).value is None and Rate(0, 0).interval == (0.0, 1.0)
