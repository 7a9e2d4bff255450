"""The collector's throughput (`python bench/bench_monitor.py`): result messages per second
with batch commits beside one commit per message (``--batch 1``, the baseline) in the same
run, and samples per second (50 KiB JPEGs) batched the same way beside one commit each,
on SQLite and on PostgreSQL.

One real collector (the ``Collector`` class `lineqc review collect` runs, in a thread of
this process) against a private Mosquitto with the messages already queued for its
session; timed from its start until the store holds them all (every message committed,
and acknowledged after its commit), on SQLite (WAL, synchronous=FULL) and on a fresh
PostgreSQL database per run (``--postgres none`` skips it).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
from sqlalchemy import create_engine, func, select

from lineqc.edge.broker import Mosquitto
from lineqc.edge.wire import dumps, image_part, result_message, sample_message
from lineqc.review.collector import BrokerUrl, Collector
from lineqc.review.monitor import Monitor, MonitorConfig
from lineqc.review.store import Frame, Rollup, Store

if TYPE_CHECKING:  # paho declares the message list type for type checkers only
    from paho.mqtt.publish import MessagesList

ROOT = "lineqc/v1/site1/line1/dev1"
# The machine's PostgreSQL (trust auth), as the tests use it.
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def results(n: int) -> list[bytes]:
    now, out = time.time(), []
    for i in range(n):
        doc = result_message(
            frame_id=f"dev1-cam0-1-{i}", device="dev1", camera="cam0", seq=i, ts=now + i * 0.01,
            model_version="1.0", verdict="ok", label="ok", confidence=0.99, reason=None,
            latency_ms=5.0 + i % 7, sampled=None, brightness=100.0 + i % 20,
        )  # fmt: skip
        out.append(dumps(doc))
    return out


def samples(n: int, jpeg: bytes, size: tuple[int, int]) -> list[bytes]:
    out = []
    for i in range(n):
        doc = sample_message(
            why="uncertain", frame_id=f"dev1-cam0-2-{i}", device="dev1", site="site1",
            line="line1", camera="cam0", seq=i, ts=time.time(), model_version="1.0",
            classes=["ok", "scratch"], probabilities=[0.5, 0.5], verdict="uncertain",
            label="ok", confidence=0.5, reason="ambiguous",
        )  # fmt: skip
        doc["image"] = image_part(jpeg + i.to_bytes(4, "big"), *size, 90, 1.0)
        out.append(dumps(doc))
    return out


def collector(store: Store, port: int, batch: int, exit_idle: float) -> Collector:
    return Collector(
        store, BrokerUrl("127.0.0.1", port, False), topic="lineqc/v1/+/+/+/sample", group="",
        client_id="bench", exit_idle=exit_idle, monitor=Monitor(MonitorConfig()), batch=batch,
    )  # fmt: skip


def stored(store: Store, kind: str) -> int:
    with store.session() as s:
        if kind == "result":
            return int(s.scalar(select(func.coalesce(func.sum(Rollup.frames), 0))) or 0)
        return int(s.scalar(select(func.count()).select_from(Frame)) or 0)


def timed(db: str, port: int, payloads: list[bytes], kind: str, batch: int, work: Path) -> float:
    """Messages per second: queued for the session, then collected until all are stored."""
    store = Store(db, work / "images")
    collector(store, port, batch, 0.3).run()  # opens the persistent session
    msgs: MessagesList = [(f"{ROOT}/{kind}", p, 1, False) for p in payloads]
    mqtt_publish.multiple(msgs, hostname="127.0.0.1", port=port, protocol=mqtt.MQTTv5)
    c = collector(store, port, batch, 1.0)
    done: list[float] = []

    def watch() -> None:  # the collector runs on the main thread (it sets signal handlers)
        while stored(store, kind) < len(payloads):
            time.sleep(0.02)
        done.append(time.perf_counter())

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    c.run()  # until 1 s without a message
    watcher.join(5)
    if not done:
        raise SystemExit(f"collector stopped with {stored(store, kind)} of {len(payloads)}")
    elapsed = done[0] - t0
    store.close()
    return len(payloads) / elapsed


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"lineqc_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def database(backend: str, work: Path, admin_url: str) -> Iterator[str]:
    if backend == "SQLite":
        yield f"sqlite:///{work / 'review.db'}"
    else:
        with postgres_database(admin_url) as url:
            yield url


def sample_jpeg(kib: int) -> tuple[bytes, tuple[int, int]]:
    """A grey JPEG of about ``kib`` KiB (noise on a gradient, as a textured part), and its
    width and height."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    side = 64
    while True:
        grad = np.indices((side * 3 // 4, side)).sum(0) * 255 // (side * 7 // 4)
        img = np.clip(grad + rng.normal(0, 24, grad.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        if buf.size >= kib * 1024:
            return buf.tobytes(), (img.shape[1], img.shape[0])
        side += 32


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=int, default=5000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sample-kib", type=int, default=50, help="JPEG size of a sample (KiB)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument(
        "--postgres",
        default=PG_ADMIN,
        help="an admin URL of a PostgreSQL server (a fresh database is made per run), or "
        "'none' for SQLite only (default: %(default)s)",
    )
    args = p.parse_args()
    jpeg, size = sample_jpeg(args.sample_kib)  # trailing bytes after EOI keep each image distinct
    backends = ["SQLite"] + ([] if args.postgres == "none" else ["PostgreSQL"])
    messages = results(args.results)
    cases = [
        ("results", "result", 1, messages),
        ("results", "result", args.batch, messages),
        ("samples", "sample", 1, samples(args.samples // 4, jpeg, size)),  # the slow baseline
        ("samples", "sample", args.batch, samples(args.samples, jpeg, size)),
    ]
    rates: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        broker = Mosquitto(folder=Path(tmp) / "broker", extra="max_queued_messages 100000")
        with broker:
            for run, backend in itertools.product(range(args.runs), backends):
                for name, kind, batch, payloads in cases:
                    work = Path(tmp) / f"{run}-{backend}-{kind}-{batch}"
                    work.mkdir()
                    with database(backend, work, args.postgres) as db:
                        rate = timed(db, broker.port, payloads, kind, batch, work)
                    rates.setdefault((backend, name, batch), []).append(rate)
    print(
        f"collector throughput, {args.runs} runs (median, min-max); samples of "
        f"{len(jpeg) / 1024:.0f} KiB JPEG ({size[0]}x{size[1]}):",
        file=sys.stderr,
    )
    for (backend, name, batch), values in rates.items():
        label = f"{backend}, {name}, " + ("one commit each" if batch == 1 else f"batch {batch}")
        print(
            f"  {label:>36}: {statistics.median(values):8.0f} msg/s "
            f"({min(values):.0f}-{max(values):.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
