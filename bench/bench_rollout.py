"""Fleet rollout (`make bench-rollout`): what a deploy costs the line.

A real `lineqc edge run` inspects at a line rate against a private Mosquitto; `lineqc fleet`
publishes the same model re-sealed as a newer version and deploys it in shadow. Each figure
beside its baseline from the same run:

- capture-to-decision latency of the live frames (p50, p99) before the deploy (baseline)
  and while the candidate shadows a share of them in its own thread;
- the candidate's own latency in the shadow (preprocess to decision) and its agreement;
- the switch: the gap between the last frame of the old model and the first of the new
  (capture times) beside the median gap between frames, and the latency of the first
  frames after it (a new ONNX Runtime session's first runs);
- deploy to first frame of the new model (download, verify, stage, shadow, switch).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from lineqc.edge.broker import Mosquitto
from lineqc.edge.bundle import load_bundle, seal
from lineqc.edge.mqtt_login import BrokerUrl, MqttLogin
from lineqc.edge.signing import load_private_key
from lineqc.review import fleet

TARGET = "bench/l1/roll1"


def newer(bundle: Path, key: Path, dest: Path) -> str:
    """The same model re-sealed with a newer version at ``dest``; returns the version."""
    shutil.copytree(bundle, dest)
    manifest = load_bundle(dest, key_pub(key)).manifest
    parts = manifest.model.version.split(".")
    version = ".".join([*parts[:-1], str(int(parts[-1]) + 1)])
    model = manifest.model.model_copy(update={"version": version})
    seal(dest, manifest.model_copy(update={"model": model}), load_private_key(key))
    return version


def key_pub(key: Path) -> Path:
    return key.with_suffix(".pub")


class Recorder:
    """Every result and status of the device, as a subscriber sees them."""

    def __init__(self, port: int) -> None:
        self.results: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, *a: cl.subscribe(f"lineqc/v1/{TARGET}/+", qos=1)
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _on_message(self, c: Any, ud: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/result"):
                self.results.append(doc)
            elif msg.topic.endswith("/status"):
                self.statuses.append(doc)

    def rollout(self) -> dict[str, Any]:
        with self.lock:
            return dict((self.statuses[-1].get("rollout") or {}) if self.statuses else {})

    def wait(self, what: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out; last rollout {self.rollout()}")
            time.sleep(0.1)


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "n": len(values)}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    v2_dir = work / "v2"
    v1 = load_bundle(args.bundle, key_pub(args.key)).version
    v2 = newer(args.bundle, args.key, v2_dir)
    entry = fleet.publish(v2_dir, work / "store", key_pub(args.key))
    broker = Mosquitto(folder=work / "broker").start()
    rec = Recorder(broker.port)
    site, line, device = TARGET.split("/")
    cfg = {
        "device": {"id": device, "site": site, "line": line},
        "camera": {"source": args.source, "loop": True, "fps": args.fps, "preload": True},
        "model": {"bundle": str(args.bundle), "public_key": str(key_pub(args.key)), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "outbox": {"path": str(work / "outbox.sqlite")},
        "sampling": {"audit_share": 0.0, "uncertain": False},
        "telemetry": {"interval_s": 1},
        "actuator": {"kind": "none"},
        "latency_budget_ms": args.budget_ms,
    }
    (work / "device.yaml").write_text(yaml.safe_dump(cfg))
    log = open(work / "device.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(work / "device.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        rec.wait(lambda: len(rec.results) > 20, 120)
        n0 = len(rec.results)
        time.sleep(args.seconds)
        baseline = [r["latency_ms"] for r in rec.results[n0:]]
        shadow_frames = max(20, int(args.fps * args.seconds * args.shadow_share))
        t_deploy = time.time()
        fleet.deploy(
            MqttLogin(BrokerUrl("127.0.0.1", broker.port, tls=False)),
            "lineqc/v1",
            [TARGET],
            args.key,
            {
                "version": v2,
                "sha256": entry["sha256"],
                "size": entry["size"],
                "urls": [(work / "store").resolve().as_uri() + f"/{entry['sha256']}.tar"],
                "stage": "shadow",
                "shadow_share": args.shadow_share,
                "shadow_frames": shadow_frames,
                "min_agreement": 0.0,
                "max_uncertain_delta": 1.0,
                "probation_frames": 50,
            },
        )
        rec.wait(lambda: rec.rollout().get("state") == "shadow", 120)
        n1 = len(rec.results)
        rec.wait(lambda: rec.rollout().get("state") in ("probation", "done"), 600)
        with rec.lock:
            shadowed = [
                s["rollout"]["shadow"]
                for s in rec.statuses
                if (s.get("rollout") or {}).get("shadow")
            ]
            during = [r["latency_ms"] for r in rec.results[n1:] if r["model_version"] == v1]
        rec.wait(lambda: sum(r["model_version"] == v2 for r in rec.results) > 30, 60)
        with rec.lock:
            results = sorted(rec.results, key=lambda r: r["ts"])
        first = next(i for i, r in enumerate(results) if r["model_version"] == v2)
        gaps = [(b["ts"] - a["ts"]) * 1000 for a, b in itertools.pairwise(results)]
        first_v2 = results[first]
        return {
            "machine": "2-core CPU shared with other jobs",
            "model": f"{load_bundle(args.bundle, key_pub(args.key)).manifest.model.name} {v1}",
            "fps": args.fps,
            "shadow_share": args.shadow_share,
            "latency_ms_baseline": pct(baseline),
            "latency_ms_during_shadow": pct(during),
            "shadow_candidate": shadowed[-1] if shadowed else None,
            "switch_gap_ms": round(gaps[first - 1], 1),
            "median_gap_ms": round(statistics.median(gaps), 1),
            "latency_ms_first_5_after_switch": [
                r["latency_ms"] for r in results[first : first + 5]
            ],
            "deploy_to_first_new_frame_s": round(first_v2["ts"] - t_deploy, 2),
            "bundle_tar_bytes": entry["size"],
        }
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        rec.client.disconnect()
        broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="a signed bundle folder")
    p.add_argument("--key", type=Path, required=True, help="its private key (PREFIX.key)")
    p.add_argument("--source", required=True, help="images to replay (a glob)")
    p.add_argument("--fps", type=float, default=10.0, help="the line rate (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=15.0, help="per phase (default: %(default)s)")
    p.add_argument("--shadow-share", type=float, default=0.5, help="(default: %(default)s)")
    p.add_argument("--budget-ms", type=float, default=200.0, help="(default: %(default)s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not glob.glob(args.source, recursive=True):
        raise SystemExit(f"--source {args.source!r}: no image")
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        out = run(args, Path(tmp))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out.items():
        print(f"{key:<34} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
