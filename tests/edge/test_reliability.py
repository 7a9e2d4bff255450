"""At-least-once delivery of flagged frames through broker outages and killed processes.

Real Mosquitto on loopback, the real runtime as a subprocess, a real subscriber with a
persistent session; arrivals are counted by frame id.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from lineqc.edge.outbox import Outbox


@pytest.mark.slow
def test_broker_killed_for_30s_mid_run_loses_no_flagged_frame(
    edge, broker_factory, subscriber_factory, tmp_path: Path
) -> None:
    broker = broker_factory(persistence=True)
    sub = subscriber_factory(broker.port)
    cfg = edge.config(
        broker.port,
        camera={"loop": True, "fps": 25},
        sampling={"audit_share": 0.0},
        shutdown_flush_s=60,
    )
    log = tmp_path / "runtime.log"
    proc = edge.start(cfg, "--max-frames", "1000", "--json", log=log)
    assert sub.wait_for(lambda: len(sub.frame_ids()) > 50, 30), log.read_text()
    broker.kill()
    before = len(sub.frame_ids())
    time.sleep(30)
    broker.start()
    proc.wait(timeout=180)
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    summary = json.loads(text[text.index("{\n") :])
    assert summary["frames"] == 1000 and summary["outbox"]["left"] == 0
    uncertain = summary["decisions"].get("uncertain", 0)
    assert uncertain > 500  # the smoke bundle flags most frames
    assert sub.wait_for(lambda: len(sub.frame_ids()) >= uncertain, 30)
    ids = sub.frame_ids()
    assert len(ids) == uncertain, f"{len(ids)} distinct flagged frames arrived of {uncertain}"
    assert before < uncertain  # the outage really was in the middle
    results = {d["frame_id"] for d in sub.docs("result")}
    assert len(results) == 1000  # per-frame results came through too
    assert ids == {d["frame_id"] for d in sub.docs("result") if d["verdict"] == "uncertain"}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_committed_frame(
    edge, broker, subscriber_factory, tmp_path: Path
) -> None:
    sub = subscriber_factory(broker.port)
    cfg = edge.config(
        broker.port,
        camera={"loop": True, "fps": 0},
        sampling={"audit_share": 0.0},
        mqtt={"max_inflight": 8},
        shutdown_flush_s=30,
    )
    outbox_path = tmp_path / "outbox.sqlite"
    rng = random.Random(1234)
    committed: set[str] = set()
    pending_after_kill = []
    for run in range(10):
        proc = edge.start(cfg, log=tmp_path / f"run{run}.log")
        time.sleep(rng.uniform(1.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        box = Outbox(outbox_path, 1 << 30)  # recovers the WAL like a restarted device would
        keys = set(box.keys("sample"))
        box.close()
        committed |= keys
        pending_after_kill.append(len(keys))
    assert sum(pending_after_kill) > 0, "no kill caught a committed, unacknowledged frame"
    committed |= sub.frame_ids()  # acknowledged before a kill: the broker had them
    # the restart delivers what the outbox holds, then stops cleanly
    final = edge.run(cfg, "--max-frames", "5", "--json", timeout=120)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["outbox"]["left"] == 0
    assert sub.wait_for(lambda: committed <= sub.frame_ids(), 30)
    missing = committed - sub.frame_ids()
    assert not missing, f"{len(missing)} committed frames never arrived"
