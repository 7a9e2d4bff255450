"""Running as a service (`make bench-service`): what the systemd integration costs.

Each figure beside a baseline measured in the same run:

- the watchdog's cost per frame (``Watchdog.beat``: a comparison on most frames, a datagram
  at most twice per WatchdogSec), and a datagram on every frame (the worst case), beside
  one ``preprocess`` of a replayed frame;
- SIGTERM to exit of a real `lineqc edge run` with messages waiting in the outbox and the
  broker back at the SIGTERM, beside SIGTERM with the broker up all along, against
  ``shutdown_flush_s``;
- SIGHUP to ``READY=1`` for a reload that changes the decision policy, beside one that
  changes nothing.

systemd is not needed: the notify socket is bound here, as systemd binds it. The runtime
runs a real bundle against a private Mosquitto.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import yaml

from lineqc.edge.broker import Mosquitto
from lineqc.edge.bundle import load_bundle
from lineqc.edge.preprocess import preprocess
from lineqc.edge.service import Notifier, NotifyListener, Watchdog
from lineqc.edge.sources import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]


def per_call_us(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def watchdog_cost(listener: NotifyListener, bundle: Path, pubkey: Path, image: Path) -> dict:
    n = 20000
    realistic = Watchdog(Notifier(listener.address, watchdog_s=30.0))
    realistic.beat(1)  # the first ping; then 15 s until the next is due
    worst = Watchdog(Notifier(listener.address, watchdog_s=1e-9))  # a datagram per frame
    spec = load_bundle(bundle, pubkey).spec
    frame = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise SystemExit(f"{image}: not an image OpenCV reads")
    return {
        "beat_us": round(per_call_us(lambda i: realistic.beat(i + 2), n), 3),
        "beat_every_frame_us": round(per_call_us(lambda i: worst.beat(i + 1), n), 3),
        "preprocess_us": round(per_call_us(lambda i: preprocess(frame, spec), 2000), 3),
        "frame_shape": list(frame.shape),
    }


def device_config(folder: Path, bundle: Path, pubkey: Path, source: str, port: int) -> Path:
    doc = {
        "device": {"id": "bench1", "site": "bench", "line": "l1"},
        "camera": {"source": source, "loop": True, "fps": 20},
        "model": {"bundle": str(bundle), "public_key": str(pubkey)},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "outbox": {"path": str(folder / "outbox.sqlite")},
        "sampling": {"audit_share": 0.0},
        "telemetry": {"interval_s": 1},
        "actuator": {"kind": "none"},
        "shutdown_flush_s": 30,
    }
    path = folder / "device.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(config: Path, sock: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lineqc", "edge", "run", "--config", str(config), "--json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": sock, "PYTHONUNBUFFERED": "1"},
        )


def summary(log: Path) -> dict[str, Any]:
    text = log.read_text()
    return dict(json.loads(text[text.rindex("\n{\n") + 1 :]))


def sigterm_run(work: Path, kit: dict[str, Any], away: bool, run_s: float) -> dict[str, Any]:
    """One runtime: inspect ``run_s`` seconds (the broker away or up), SIGTERM, time the exit."""
    work.mkdir(parents=True)
    listener = NotifyListener(str(work / "notify.sock"))
    broker = Mosquitto(folder=work / "broker").start()
    try:
        cfg = device_config(work, kit["bundle"], kit["pubkey"], kit["source"], broker.port)
        if away:
            broker.stop()
        log = work / "runtime.log"
        proc = start(cfg, listener.address, log)
        if not listener.wait_for(lambda: listener.count("READY") == 1, 120):
            raise SystemExit(f"no READY=1 from the runtime: {log.read_text()}")
        time.sleep(run_s)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        listener.wait_for(lambda: listener.count("STOPPING") == 1, 10)
        status = listener.with_key("STOPPING")[0][1]["STATUS"] if listener.count("STOPPING") else ""
        if away:
            broker.start()
        proc.wait(timeout=120)
        took = time.monotonic() - t0
        s = summary(log)
        return {
            "exit_s": round(took, 2),
            "rc": proc.returncode,
            "waiting_at_sigterm": int(status.split("(")[1].split()[0]) if "(" in status else None,
            "left": s["outbox"]["left"],
            "flushed": s["outbox"]["flushed"],
        }
    finally:
        broker.stop()
        listener.close()


def ready_count(listener: NotifyListener, n: int) -> Callable[[], bool]:
    return lambda: listener.count("READY") == n


def reload_runs(work: Path, kit: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """SIGHUP to READY=1: a changed decision policy, and the same file again (baseline)."""
    work.mkdir(parents=True)
    listener = NotifyListener(str(work / "notify.sock"))
    broker = Mosquitto(folder=work / "broker").start()
    out: dict[str, list[float]] = {"changed": [], "unchanged": []}
    try:
        cfg = device_config(work, kit["bundle"], kit["pubkey"], kit["source"], broker.port)
        doc = yaml.safe_load(cfg.read_text())
        proc = start(cfg, listener.address, work / "runtime.log")
        if not listener.wait_for(lambda: listener.count("READY") == 1, 120):
            raise SystemExit("no READY=1 from the runtime")
        readies = 1
        for i in range(repeats):
            for kind in ("changed", "unchanged"):
                if kind == "changed":
                    doc["decision"] = {"prob_floor": round(0.3 + 0.05 * i, 2)}
                    cfg.write_text(yaml.safe_dump(doc))
                time.sleep(0.5)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                readies += 1
                if not listener.wait_for(ready_count(listener, readies), 30):
                    raise SystemExit("no READY=1 after SIGHUP")
                out[kind].append(listener.with_key("READY")[-1][0] - t0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        broker.stop()
        listener.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "runs" / "bundle")
    p.add_argument("--pubkey", type=Path, default=REPO / "runs" / "keys" / "signing.pub")
    p.add_argument("--source", required=True, help="a glob of frames to replay ('**' recurses)")
    p.add_argument("--run-s", type=float, default=3.0, help="inspecting before the SIGTERM")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"bench-service: no bundle at {args.bundle} (make demo)", file=sys.stderr)
        return 2
    found = sorted(glob.glob(args.source, recursive=True))
    frames = [f for f in found if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not frames:
        print(f"bench-service: no frames match {args.source}", file=sys.stderr)
        return 2
    kit = {"bundle": args.bundle, "pubkey": args.pubkey, "source": args.source}
    frame = Path(frames[0])
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp)
        listener = NotifyListener(str(root / "micro.sock"))
        try:
            wd = watchdog_cost(listener, args.bundle, args.pubkey, frame)
        finally:
            listener.close()
        stops: dict[str, list[dict[str, Any]]] = {"broker_back": [], "baseline": []}
        for i in range(args.repeats):
            stops["broker_back"].append(sigterm_run(root / f"away{i}", kit, True, args.run_s))
            stops["baseline"].append(sigterm_run(root / f"up{i}", kit, False, args.run_s))
        reloads = reload_runs(root / "reload", kit, args.repeats)
    report = {"watchdog": wd, "sigterm": stops, "reload_s": reloads, "shutdown_flush_s": 30}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"watchdog per frame: {wd['beat_us']:.2f} us (a datagram on every frame: "
        f"{wd['beat_every_frame_us']:.1f} us); one preprocess of a {wd['frame_shape']} frame: "
        f"{wd['preprocess_us']:.1f} us"
    )
    for name, runs in stops.items():
        label = (
            "SIGTERM, messages waiting, broker back at SIGTERM"
            if name == "broker_back"
            else "SIGTERM, broker up all along (baseline)"
        )
        exits = [r["exit_s"] for r in runs]
        print(
            f"{label}: exit in {statistics.median(exits):.2f} s median (runs {exits}); waiting "
            f"at SIGTERM {[r['waiting_at_sigterm'] for r in runs]}, left "
            f"{[r['left'] for r in runs]}, rc {[r['rc'] for r in runs]}; bound 30 s"
        )
    for kind, times in reloads.items():
        ms = [round(t * 1000, 1) for t in times]
        print(f"SIGHUP to READY=1, {kind}: {statistics.median(ms):.1f} ms median (runs {ms})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
