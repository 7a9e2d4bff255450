"""`lineqc review collect` end to end: real Mosquitto brokers, the collector as a real
process (killed with SIGKILL where that is the point), real SQLite and PostgreSQL
databases, wire samples made with the device's own builders, and the real edge runtime."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest
import sqlalchemy
from sqlalchemy import func, select

from lineqc.edge.broker import BrokerTLS
from lineqc.edge.defect_map import decode_png, png
from lineqc.edge.mqtt_login import BrokerUrl, parse_broker_url
from lineqc.edge.wire import Sample, defect_map_part, dumps, image_part, result_message
from lineqc.errors import LineqcError
from lineqc.review.store import Frame, Reject, Store, normalize_url
from tests.bombs import BOMB_SIDE, bomb_jpeg
from tests.pki import make_fleet

TOPIC = "lineqc/v1/site1/line1/dev1/sample"


def jpeg(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    """A real JPEG of a small synthetic frame, different for every seed."""
    frame = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", frame)
    assert ok
    return buf.tobytes()


def frame_id(seq: int) -> str:
    return f"dev1-cam0-18f3a9c2b41-{seq:07d}"


def frame_ids(n: int) -> list[str]:
    return sorted(frame_id(i) for i in range(n))


def publish(port: int, payloads: list[bytes], topic: str = TOPIC, **options: Any) -> None:
    """Publish at QoS 1 on ``topic``; returns once the broker acknowledged every message.

    ``options``: paho's ``auth`` or ``tls``."""
    msgs = [{"topic": topic, "payload": p, "qos": 1} for p in payloads]
    mqtt_publish.multiple(msgs, hostname="127.0.0.1", port=port, protocol=mqtt.MQTTv5, **options)


def query(db: str, statement: Any) -> list[Any]:
    engine = sqlalchemy.create_engine(normalize_url(db))
    try:
        with engine.connect() as conn:
            return list(conn.execute(statement))
    finally:
        engine.dispose()


def rows(db: str) -> list[Any]:
    """The stored frames (rows with the frames columns), by frame id."""
    return query(db, select(Frame).order_by(Frame.frame_id))


def count(db: str) -> int:
    return int(query(db, select(func.count()).select_from(Frame))[0][0])


def wait_until(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@dataclass
class CollectorRun:
    """One `lineqc review collect` process; its stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def log(self) -> str:
        return self.err.read_text()

    def wait_log(self, text: str, times: int = 1, timeout: float = 30) -> None:
        wait_until(lambda: self.log.count(text) >= times or self.proc.poll() is not None, timeout)
        assert self.log.count(text) >= times, f"collector never logged {text!r}:\n{self.log}"

    def finish(self, timeout: float = 60) -> str:
        """Wait for the exit (--exit-idle or a signal); its summary line, after rc 0."""
        assert self.proc.wait(timeout) == 0, self.log
        assert "Traceback" not in self.log, self.log
        return self.out.read_text().strip()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Callable[..., CollectorRun]]:
    """Start collectors: collector(port, db, *args, client_id=...); killed at the end.

    It returns once the collector logged ``ready`` (by default: it subscribed, so frames
    published from then on reach its session).
    """
    runs: list[CollectorRun] = []

    def start(
        port: int,
        db: str,
        *args: str,
        client_id: str = "c1",
        ready: str = "subscribed to ",
        scheme: str = "mqtt",
    ) -> CollectorRun:
        name = f"{client_id}-{len(runs)}"
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        cmd = [
            sys.executable, "-m", "lineqc", "review", "collect",
            "--broker", f"{scheme}://127.0.0.1:{port}", "--db", db,
            "--images", str(tmp_path / "images"), "--client-id", client_id, *args,
        ]  # fmt: skip
        with open(out, "wb") as o, open(err, "wb") as e:
            run = CollectorRun(subprocess.Popen(cmd, stdout=o, stderr=e), out, err)
        runs.append(run)
        run.wait_log(ready)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return str(tmp_path / "review.db")


@pytest.fixture
def sample_doc(make_sample: Callable[..., Sample]) -> Callable[..., dict[str, Any]]:
    """sample_doc(seq, image=None): a wire sample (a dict, make_sample's metadata) whose
    image is jpeg(seq) unless given: every frame its own image."""

    def build(seq: int, image: bytes | None = None) -> dict[str, Any]:
        why = "uncertain" if seq % 5 else "audit"
        doc = make_sample(frame_id(seq), seq=seq, why=why).model_dump()
        doc["image"] = image_part(jpeg(seq) if image is None else image, 32, 24, 90, 1.0)
        return doc

    return build


# ---- the tests --------------------------------------------------------------------------


def test_every_frame_is_stored_once_and_duplicates_are_dropped(
    broker, collector, sample_doc, db_url: str, tmp_path: Path
) -> None:
    run = collector(broker.port, db_url)
    shared = jpeg(1000)  # two frames with one image share the stored file
    docs = [sample_doc(i) for i in range(40)] + [sample_doc(40, shared), sample_doc(41, shared)]
    docs.append(sample_doc(42))  # sent last: once it is stored, every duplicate was handled
    publish(broker.port, [dumps(d) for d in docs[:-1] + docs[:10] + docs[-1:]])
    assert wait_until(lambda: count(db_url) == len(docs))
    assert run.stop() == "stored 43, duplicates 10, rejected 0, store errors 0"
    stored = rows(db_url)
    assert [r.frame_id for r in stored] == sorted(d["frame_id"] for d in docs)
    with closing(Store(db_url, tmp_path / "images")) as store:
        for row, doc in zip(stored, sorted(docs, key=lambda d: d["frame_id"]), strict=True):
            assert row.why == doc["why"] and row.seq == doc["seq"] and row.ts == doc["ts"]
            data = store.image_path(row.image_sha256).read_bytes()
            assert data == base64.b64decode(doc["image"]["data"])
    assert stored[40].image_sha256 == stored[41].image_sha256
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 42


def test_malformed_messages_are_logged_counted_and_never_stored(
    broker, collector, sample_doc, db_url: str, tmp_path: Path
) -> None:
    run = collector(broker.port, db_url)

    def variant(change: Callable[[dict[str, Any]], object]) -> bytes:
        doc = sample_doc(1)
        change(doc)
        return dumps(doc)

    png = cv2.imencode(".png", np.zeros((24, 32), np.uint8))[1].tobytes()
    result = result_message(
        frame_id="f", device="dev1", camera="cam0", seq=1, ts=1.0, model_version="m",
        verdict="ok", label="ok", confidence=1.0, reason=None, latency_ms=1.0, sampled=None,
    )  # fmt: skip
    bad = {
        "not JSON": b"\xff{not json",
        "not a JSON object": b"[1, 2]",
        "wire version": variant(lambda d: d.update(v=2)),
        "is not a sample": dumps(result),
        "frame_id": variant(lambda d: d.pop("frame_id")),
        "probabilities": variant(lambda d: d.update(probabilities="high")),
        "not base64": variant(lambda d: d["image"].update(data="@@@@" + d["image"]["data"])),
        "not a readable JPEG": variant(
            lambda d: d["image"].update(data=base64.b64encode(png).decode())
        ),
        "the JPEG is 32x24": variant(lambda d: d["image"].update(width=64)),
        "not finite": json.dumps({**sample_doc(1), "confidence": float("nan")}).encode(),
        "longer than 200": variant(lambda d: d.update(frame_id="x" * 201)),
        "NUL": variant(lambda d: d.update(device="dev\x001")),
        "not valid Unicode": variant(lambda d: d.update(line="line\ud800")),
    }
    good = sample_doc(2)
    publish(broker.port, [*bad.values(), dumps(good)])
    assert wait_until(lambda: count(db_url) == 1)  # sent last
    assert run.stop() == f"stored 1, duplicates 0, rejected {len(bad)}, store errors 0"
    assert [r.frame_id for r in rows(db_url)] == [good["frame_id"]]
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 1  # nothing stored half
    rejects = query(db_url, select(Reject.topic, Reject.reason, Reject.size).order_by(Reject.id))
    assert [(t, s) for t, _, s in rejects] == [(TOPIC, len(p)) for p in bad.values()]
    for (_, reason, _), why in zip(rejects, bad, strict=True):
        assert why in reason
    logged = [line for line in run.log.splitlines() if f"rejected a message on {TOPIC}" in line]
    assert len(logged) == len(bad)
    assert all(why in line for line, why in zip(logged, bad, strict=True))


def reject_reasons(db: str) -> list[str]:
    return [r for (r,) in query(db, select(Reject.reason).order_by(Reject.id))]


def test_values_a_page_cannot_show_are_rejected(
    broker, collector, sample_doc, db_url: str, tmp_path: Path
) -> None:
    """Absurd capture times, ids off the documented pattern, a version that is not the
    integer 1, values that do not fit the classes and a decompression bomb (30000 x 30000
    pixels declared in a few hundred bytes): each a counted reject, nothing stored."""
    run = collector(broker.port, db_url)

    def variant(**fields: Any) -> bytes:
        return dumps({**sample_doc(1), **fields})

    bomb = base64.b64encode(bomb_jpeg()).decode()
    bad = {
        "ts: 1e+18 is not a capture time": variant(ts=1e18),
        "ts: -1e+18 is not a capture time": variant(ts=-1e18),
        "ts: 0.0 is not a capture time": variant(ts=0.0),
        "ts: 253402300800.0 is not a capture time": variant(ts=253402300800.0),  # year 10000
        "ts: 4102444800.0 is not a capture time": variant(ts=4102444800.0),  # 2100
        "site: '../x' is not an id": variant(site="../x"),
        "camera: 'cam 0' is not an id": variant(camera="cam 0"),
        "frame_id: 'dev1-cam0-x' is not dev1-cam0-<run>-<seq>": variant(frame_id="dev1-cam0-x"),
        "wire version True is not supported": variant(v=True),
        "wire version 1.0 is not supported": json.dumps({**sample_doc(1), "v": 1.0}).encode(),
        "probabilities: 2 for 3 classes": variant(probabilities=[0.5, 0.5]),
        "confidence, probabilities: outside 0..1": variant(probabilities=[1.5, 0.3, 0.2]),
        "classes: empty or repeated": variant(classes=["ok", "ok", "dent"]),
        "label: 'crack' is not one of the classes": variant(label="crack"),
        "over the limit of 40000000 pixels (refused before decoding)": variant(
            image={**sample_doc(1)["image"], "data": bomb, "width": BOMB_SIDE, "height": BOMB_SIDE}
        ),
    }
    good = sample_doc(2)
    publish(broker.port, [*bad.values(), dumps(good)])
    assert wait_until(lambda: count(db_url) == 1)  # sent last
    assert run.stop() == f"stored 1, duplicates 0, rejected {len(bad)}, store errors 0"
    assert [r.frame_id for r in rows(db_url)] == [good["frame_id"]]
    for reason, why in zip(reject_reasons(db_url), bad, strict=True):
        assert why in reason, (why, reason)
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 1


def test_a_poison_message_is_a_counted_reject_and_the_stream_goes_on(
    broker, collector, sample_doc, sqlite_db: str
) -> None:
    """Deeply nested JSON (the parser runs out of stack) is rejected and acknowledged like
    any malformed message: no reconnect loop, the frames after it are stored."""
    run = collector(broker.port, sqlite_db)
    poison = [b"[" * 100_000, b'{"v": 1, "type": "sample", "x": ' + b"[" * 100_000 + b"]}"]
    publish(broker.port, [*poison, dumps(sample_doc(1)), dumps(sample_doc(2))])
    assert wait_until(lambda: count(sqlite_db) == 2)
    assert run.stop() == "stored 2, duplicates 0, rejected 2, store errors 0"
    assert all("nested too deeply" in r for r in reject_reasons(sqlite_db))
    assert "review store failed" not in run.log


def test_identity_is_bound_to_the_topic(
    broker, collector, sample_doc, db_url: str, tmp_path: Path
) -> None:
    """A client publishing on another device's topic, or pre-publishing another device's
    frame ids on its own, is refused (counted, acknowledged): the genuine samples are then
    stored, not dropped as duplicates, with their own images."""
    run = collector(broker.port, db_url, "--topic", "lineqc/#")  # every topic reaches it
    genuine = [sample_doc(i) for i in range(3)]
    forged = [
        {**d, "image": image_part(jpeg(100 + i), 32, 24, 90, 1.0)} for i, d in enumerate(genuine)
    ]
    attacker = "lineqc/v1/site1/line1/dev2/sample"  # the attacker's own device topic
    publish(broker.port, [dumps(d) for d in forged], topic=attacker)
    elsewhere = {**sample_doc(9), "site": "site2"}  # the victim's ids on a site it is not on
    publish(broker.port, [dumps(elsewhere)])
    publish(broker.port, [dumps(sample_doc(8))], topic="lineqc/v1/x/sample")
    publish(broker.port, [dumps(d) for d in genuine])
    assert wait_until(lambda: count(db_url) == 3)
    assert run.stop() == "stored 3, duplicates 0, rejected 5, store errors 0"
    reasons = reject_reasons(db_url)
    assert (
        reasons[:3]
        == ["identity mismatch: the message says site1/line1/dev1, its topic site1/line1/dev2"] * 3
    )
    assert "the message says site2/line1/dev1, its topic site1/line1/dev1" in reasons[3]
    assert "is not <prefix>/<site>/<line>/<device>/sample" in reasons[4]
    with closing(Store(db_url, tmp_path / "images")) as store:
        for row, doc in zip(rows(db_url), genuine, strict=True):
            data = store.image_path(row.image_sha256).read_bytes()
            assert data == base64.b64decode(doc["image"]["data"])


def test_a_duplicate_frame_id_with_other_content_is_counted_and_logged(
    broker, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    run = collector(broker.port, sqlite_db)
    first = sample_doc(1)
    other = {**first, "image": image_part(jpeg(77), 32, 24, 90, 1.0)}
    publish(broker.port, [dumps(first), dumps(first), dumps(other), dumps(sample_doc(2))])
    assert wait_until(lambda: count(sqlite_db) == 2)
    assert run.stop() == "stored 2, duplicates 1, rejected 0, store errors 0, conflicts 1"
    (stored,) = [r for r in rows(sqlite_db) if r.frame_id == first["frame_id"]]
    with closing(Store(sqlite_db, tmp_path / "images")) as store:
        data = store.image_path(stored.image_sha256).read_bytes()
    assert data == base64.b64decode(first["image"]["data"])  # the first one is kept
    (reason,) = reject_reasons(sqlite_db)
    assert f"frame {first['frame_id']}: already stored with other content" in reason
    assert f"conflicting duplicate on {TOPIC}" in run.log


def grey_png(cells: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cells)
    assert ok
    return buf.tobytes()


def test_defect_maps_are_stored_and_a_malformed_one_costs_only_the_map(
    broker, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    """A valid map is stored beside its frame's image; every malformed one is dropped and
    logged while its frame is stored (the map is an aid, the frame is the evidence)."""
    run = collector(broker.port, sqlite_db)
    cells = np.array([[0.0, 0.5, 1.0], [0.25, 0.0, 0.75]], np.float32)
    good = png(cells)
    huge = grey_png(np.zeros((1, 2000), np.uint8))  # over 1024 a side, from the header alone
    b64 = base64.b64encode
    bad: dict[str, Callable[[dict[str, Any]], object]] = {
        "the PNG is 3x2, the message says 4x2": lambda m: m.update(width=4),
        "defect_map.data: not base64": lambda m: m.update(data="@@" + m["data"]),
        "bytes that are not a PNG": lambda m: m.update(data=b64(jpeg(1)).decode()),
        "not an 8-bit grey PNG (bit depth 8, colour type 2)": lambda m: m.update(
            data=b64(grey_png(np.zeros((2, 3, 3), np.uint8))).decode()
        ),
        "not an 8-bit grey PNG (bit depth 16": lambda m: m.update(
            data=b64(grey_png(np.zeros((2, 3), np.uint16))).decode()
        ),
        "not a readable PNG": lambda m: m.update(data=b64(good[:40]).decode()),
        "the PNG is 2000x1, over 1024 a side": lambda m: m.update(data=b64(huge).decode()),
        "defect_map.width": lambda m: m.update(width=5000),  # the wire model refuses it
        "defect_map.format": lambda m: m.update(format="jpeg"),
    }
    docs = []
    for seq, change in enumerate([None, *bad.values()]):
        doc = sample_doc(seq)
        doc["defect_map"] = defect_map_part(good, 3, 2)
        if change is not None:
            change(doc["defect_map"])
        docs.append(doc)
    docs.append(sample_doc(len(docs)))  # no map at all (an older device or model)
    publish(broker.port, [dumps(d) for d in docs])
    assert wait_until(lambda: count(sqlite_db) == len(docs))
    summary = run.stop()
    assert summary == f"stored {len(docs)}, duplicates 0, rejected 0, store errors 0, " + (
        f"defect maps dropped {len(bad)}"
    )
    with closing(Store(sqlite_db, tmp_path / "images")) as store:
        stored = {r.frame_id: r.image_sha256 for r in rows(sqlite_db)}
        first = store.defect_map_path(stored[docs[0]["frame_id"]])
        assert (
            first.name.endswith(".defect.png")
            and first.parent == store.image_path(stored[docs[0]["frame_id"]]).parent
        )
        assert first.read_bytes() == good
        np.testing.assert_allclose(decode_png(first.read_bytes()), cells, atol=0.5 / 255)
        for doc in docs[1:]:
            assert not store.defect_map_path(stored[doc["frame_id"]]).exists()
    assert sorted(p.name for p in (tmp_path / "images").rglob("*.png")) == [first.name]
    logged = [line for line in run.log.splitlines() if "without its defect map" in line]
    assert len(logged) == len(bad)
    for line, doc, why in zip(logged, docs[1:], bad, strict=False):
        assert doc["frame_id"] in line and why in line, line


def test_sigkill_mid_stream_then_restart_loses_nothing(
    broker, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    """Kill -9 twice while frames flow; every frame the broker took is stored exactly once.

    Small batches, so that the kills land between commits and inside an unacknowledged batch."""
    n = 300
    payloads = [dumps(sample_doc(i)) for i in range(n)]
    batch = ("--batch", "10")
    run = collector(broker.port, sqlite_db, *batch)
    sender = threading.Thread(target=publish, args=(broker.port, payloads))
    sender.start()
    at_kill = []
    for threshold in (20, 150):
        assert wait_until(lambda t=threshold: count(sqlite_db) >= t, step=0.01)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        at_kill.append(count(sqlite_db))
        # The same client id: its session. With a session present the broker sends what it
        # holds before the SUBACK, so do not wait for the subscription here.
        run = collector(broker.port, sqlite_db, *batch, ready="connected to")
    sender.join()
    assert wait_until(lambda: count(sqlite_db) >= n)
    summary = run.stop()
    assert max(at_kill) < n, f"a kill came after the last frame: {at_kill}"
    stored = rows(sqlite_db)
    assert [r.frame_id for r in stored] == frame_ids(n)
    with closing(Store(sqlite_db, tmp_path / "images")) as store:  # no row without its image
        assert all(store.image_path(r.image_sha256).is_file() for r in stored)
    # the last run stored what the kills left over; redeliveries counted as duplicates
    assert summary.startswith(f"stored {n - at_kill[-1]}, "), summary


def test_two_collectors_in_one_group_split_the_frames(
    broker, collector, sample_doc, db_url: str
) -> None:
    runs = [collector(broker.port, db_url, client_id=c) for c in ("a", "b")]
    n = 60
    publish(broker.port, [dumps(sample_doc(i)) for i in range(n)])
    assert wait_until(lambda: count(db_url) == n)
    stored = [int(r.stop().split(",")[0].removeprefix("stored ")) for r in runs]
    assert all(s > 0 for s in stored) and sum(stored) == n, stored
    assert [r.frame_id for r in rows(db_url)] == frame_ids(n)


def test_database_outage_on_postgresql_delays_frames_and_loses_none(
    broker, collector, sample_doc, pg_url: str, tmp_path: Path
) -> None:
    """The database refuses connections while frames arrive: nothing is acknowledged, and
    once it is back the broker's redeliveries bring every frame in."""
    run = collector(broker.port, pg_url, "--exit-idle", "2")
    publish(broker.port, [dumps(sample_doc(i)) for i in range(5)])
    assert wait_until(lambda: count(pg_url) == 5)
    name = sqlalchemy.engine.make_url(pg_url).database
    admin = sqlalchemy.create_engine(
        sqlalchemy.engine.make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
    publish(broker.port, [dumps(sample_doc(i)) for i in range(5, 15)])
    run.wait_log("review store failed")
    run.wait_log("review store still failing")  # it retried while the database was away
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    admin.dispose()
    summary = run.finish()
    assert summary.startswith("stored 15, duplicates 0, rejected 0, store errors "), summary
    assert [r.frame_id for r in rows(pg_url)] == frame_ids(15)
    assert "review store is back" in run.log


@pytest.mark.parametrize("group", ["", "lineqc-review"])
def test_broker_restart_reconnects_and_sigterm_exits_cleanly(
    broker_factory, collector, sample_doc, sqlite_db: str, group: str
) -> None:
    broker = broker_factory(persistence=True)  # sessions outlive the broker's restart
    run = collector(broker.port, sqlite_db, "--group", group)
    publish(broker.port, [dumps(sample_doc(i)) for i in range(5)])
    assert wait_until(lambda: count(sqlite_db) == 5)
    run.proc.send_signal(signal.SIGSTOP)  # the collector cannot reconnect before we publish
    broker.stop()
    broker.start()
    if group:
        # Mosquitto does not persist shared subscriptions: until the collector subscribes
        # again, nothing matches and samples would be dropped. So publish after that.
        run.proc.send_signal(signal.SIGCONT)
        run.wait_log("subscribed to $share/", times=2)
        publish(broker.port, [dumps(sample_doc(i)) for i in range(5, 10)])
    else:
        # A plain subscription is persisted: frames published while the collector is away
        # wait in its session.
        publish(broker.port, [dumps(sample_doc(i)) for i in range(5, 10)])
        run.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: count(sqlite_db) == 10)
    summary = run.stop()  # duplicates: PUBACKs the SIGSTOP held back came after the restart
    assert summary.startswith("stored 10, ") and summary.endswith("rejected 0, store errors 0")
    assert [r.frame_id for r in rows(sqlite_db)] == frame_ids(10)
    assert "disconnected from" in run.log and "session present: yes" in run.log
    assert "SIGTERM: stopping" in run.log


def test_password_file_is_used(
    broker_factory, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "review", "s3cret"], check=True)
    broker = broker_factory(extra=f"allow_anonymous false\npassword_file {passwd}")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    run = collector(broker.port, sqlite_db, "--username", "review", "--password-file", str(secret))
    auth = {"username": "review", "password": "s3cret"}
    publish(broker.port, [dumps(sample_doc(i)) for i in range(3)], auth=auth)
    assert wait_until(lambda: count(sqlite_db) == 3)
    assert run.stop() == "stored 3, duplicates 0, rejected 0, store errors 0"


def test_tls_with_a_ca_file(
    broker_factory, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "broker.crt", tmp_path / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    broker = broker_factory(extra=f"certfile {cert}\nkeyfile {key}")  # the listener speaks TLS
    run = collector(broker.port, sqlite_db, "--tls-ca", str(cert), scheme="mqtts")
    publish(broker.port, [dumps(sample_doc(i)) for i in range(3)], tls={"ca_certs": str(cert)})
    assert wait_until(lambda: count(sqlite_db) == 3)
    assert run.stop() == "stored 3, duplicates 0, rejected 0, store errors 0"
    assert f"connected to mqtts://127.0.0.1:{broker.port}" in run.log


def test_tls_with_client_certificates_and_the_fleet_acl(
    broker_factory, collector, sample_doc, sqlite_db: str, tmp_path: Path
) -> None:
    """The production setup (firmware_config/mosquitto.acl, a TLS listener requiring a
    client certificate whose CN is the username): the collector connects with its own
    certificate; a device's certificate cannot publish on another device's topic (the broker
    refuses it, it never arrives), and a sample a device publishes on its own topic claiming
    another device in its body is refused by the collector."""
    fleet = make_fleet(tmp_path / "pki", "dev1", "dev2", "lineqc-collector")
    acl = Path(__file__).resolve().parents[2] / "firmware_config" / "mosquitto.acl"
    tls = BrokerTLS(fleet.ca, fleet.server.cert, fleet.server.key)
    broker = broker_factory(tls=tls, acl_file=acl)
    me = fleet.clients["lineqc-collector"]
    run = collector(
        broker.port, sqlite_db,
        "--tls-ca", str(fleet.ca), "--tls-cert", str(me.cert), "--tls-key", str(me.key),
        scheme="mqtts",
    )  # fmt: skip
    dev2_topic = "lineqc/v1/site1/line1/dev2/sample"

    def as_dev2(seq: int) -> dict[str, Any]:
        doc = sample_doc(seq)
        return {**doc, "device": "dev2", "frame_id": doc["frame_id"].replace("dev1", "dev2")}

    dev1 = fleet.paho_tls("dev1")
    publish(broker.port, [dumps(sample_doc(1))], tls=dev1)  # its own topic, its own id
    publish(broker.port, [dumps(as_dev2(2))], topic=dev2_topic, tls=dev1)  # broker refuses
    publish(broker.port, [dumps(as_dev2(3))], tls=dev1)  # its topic, another device's body
    publish(broker.port, [dumps(as_dev2(4))], topic=dev2_topic, tls=fleet.paho_tls("dev2"))
    assert wait_until(lambda: count(sqlite_db) == 2)
    assert run.stop() == "stored 2, duplicates 0, rejected 1, store errors 0"
    assert [r.frame_id for r in rows(sqlite_db)] == [frame_id(1), as_dev2(4)["frame_id"]]
    assert reject_reasons(sqlite_db) == [
        "identity mismatch: the message says site1/line1/dev2, its topic site1/line1/dev1"
    ]
    assert f"connected to mqtts://127.0.0.1:{broker.port}" in run.log


def test_bad_arguments_are_clear_errors(lineqc, tmp_path: Path) -> None:
    db = str(tmp_path / "review.db")
    for args, message in [
        (["--broker", "http://127.0.0.1:1883"], "--broker 'http://127.0.0.1:1883': unknown"),
        (["--password-file", str(tmp_path / "nope")], f"--password-file {tmp_path / 'nope'}"),
        (["--tls-cert", str(tmp_path / "nope")], f"--tls-cert {tmp_path / 'nope'}: no such"),
        (["--tls-cert", __file__], "--tls-cert and --tls-key go together"),
    ]:
        proc = lineqc("review", "collect", "--db", db, *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "review.db").exists()  # refused before anything was opened


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://broker.plant:1884") == BrokerUrl("broker.plant", 1884, False)
    assert parse_broker_url("mqtts://10.0.0.2") == BrokerUrl("10.0.0.2", 8883, True)
    assert parse_broker_url("mqtt://[::1]") == BrokerUrl("::1", 1883, False)
    assert parse_broker_url("127.0.0.1:1883") == BrokerUrl("127.0.0.1", 1883, False)  # bare
    for bad in ("tcp://h:1883", "mqtt://h:port", "mqtt://", "mqtt://h/x"):
        with pytest.raises(LineqcError, match=re.escape(f"--broker {bad!r}")):
            parse_broker_url(bad)
    with pytest.raises(LineqcError, match=re.escape("'mqtt://u:***@h:1883': give the user")):
        parse_broker_url("mqtt://u:secret@h:1883")


def test_runtime_samples_all_arrive_in_the_review_db(
    edge, broker, collector, subscriber_factory, sqlite_db: str, tmp_path: Path
) -> None:
    sub = subscriber_factory(broker.port)
    run = collector(broker.port, sqlite_db)
    cfg = edge.config(broker.port, sampling={"audit_share": 0.2, "seed": 0})
    proc = edge.run(cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout)["frames"]
    assert sub.wait_for(lambda: len(sub.docs("result")) >= n, 10)
    sampled = {d["frame_id"]: d["sampled"] for d in sub.docs("result") if d["sampled"]}
    assert "uncertain" in sampled.values()
    assert wait_until(lambda: count(sqlite_db) >= len(sampled))
    run.stop()
    stored = rows(sqlite_db)
    assert {r.frame_id: r.why for r in stored} == sampled
    with closing(Store(sqlite_db, tmp_path / "images")) as store:
        for row in stored:
            assert row.device == "dev1" and row.image_sha256 is not None
            image = cv2.imread(str(store.image_path(row.image_sha256)), cv2.IMREAD_UNCHANGED)
            assert image.shape[:2] == (row.image_height, row.image_width) == (64, 64)
