"""`lineqc edge bench`: the runtime on frames replayed from memory, against a PyTorch loop.

The runtime runs exactly as on the line (capture thread, preprocessing, backend, decision,
sampling, outbox and MQTT publishing to a private Mosquitto when one is installed; with
``--plc`` every decision also written to a loopback PLC) on frames decoded into memory
first, so the figures measure the pipeline, not the disk. The baseline
is a plain PyTorch eager loop over the same frames through the same preprocessing: the only
place on the edge side that imports torch, lazily, and only when the baseline is asked for.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .broker import Mosquitto, free_port, mosquitto_binary
from .bundle import MANIFEST, Bundle, load_bundle, validate_manifest
from .config import CameraConfig, parse_config
from .preprocess import preprocess
from .runtime import Runtime
from .signing import generate_keys
from .sources import ImageListReader, Reader, open_reader

TARGET_P99_MS = 10.0
TARGET_SPEEDUP = 3.0
TARGET_OVERHEAD = 0.30


class MemoryReader(Reader):
    """Frames already in memory, replayed ``total`` times in a cycle, then the end."""

    replay = True
    name = "memory"

    def __init__(self, frames: list[np.ndarray], total: int) -> None:
        self.frames, self.total, self.index = frames, total, 0
        self.origin: str | None = None

    def read(self) -> np.ndarray | None:
        if self.index >= self.total:
            return None
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        return frame


def load_frames(source: str, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` distinct frames of an image folder, glob, dataset or video, decoded."""
    reader = open_reader(CameraConfig(source=source, loop=False))
    if isinstance(reader, ImageListReader):
        reader.paths = reader.paths[:limit]
    reader.open()
    frames: list[np.ndarray] = []
    try:
        while len(frames) < limit:
            frame = reader.read()
            if frame is None:
                break
            frames.append(frame)
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{source}: no frames")
    return frames


def open_bundle_unverified(path: Path) -> Bundle:
    """The bench measures speed; without --pubkey the signature is not checked."""
    where = Path(path) / MANIFEST
    return Bundle(Path(path), validate_manifest(json.loads(where.read_text()), where))


def torch_baseline(
    bundle: Bundle, frames: list[np.ndarray], n: int, threads: int, warmup: int
) -> dict[str, Any]:
    """The same frames through the same preprocessing into a timm model in PyTorch eager mode.

    Random weights: they do not change the speed. Imports torch and timm here, lazily.
    """
    import torch

    from lineqc.train.model import build_model, class_logits

    torch.set_num_threads(threads)
    name = bundle.manifest.model.name
    spec = bundle.spec
    model = build_model(
        name,
        len(bundle.classes),
        spec.channels,
        defect_map=bundle.has_defect_map,
        ok_index=bundle.classes.index(bundle.ok_class),
    ).eval()
    lat = []
    with torch.inference_mode():
        for i in range(warmup):
            model(torch.from_numpy(preprocess(frames[i % len(frames)], spec)[None]))
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            x = torch.from_numpy(preprocess(frames[i % len(frames)], spec)[None])
            probs = torch.softmax(class_logits(model(x)) / bundle.policy.temperature, dim=1)
            int(probs.argmax())
            lat.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - start
    arr = np.asarray(lat)
    return {
        "what": f"PyTorch {torch.__version__} eager, timm {name} (random weights), batch 1, "
        f"{threads} threads",
        "frames": n,
        "fps": round(n / elapsed, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(arr, 50)), 3),
            "p99": round(float(np.percentile(arr, 99)), 3),
        },
    }


def run_bench(
    bundle_path: Path,
    source: str,
    frames: int = 500,
    precision: str | None = "int8",
    threads: int = 2,
    pubkey: Path | None = None,
    broker: str = "auto",
    baseline: bool = True,
    baseline_frames: int | None = None,
    warmup: int = 20,
    distinct: int = 300,
    allow_failed_gate: bool = False,
    plc: str | None = None,
    plc_deadline_ms: float = 50.0,
) -> dict[str, Any]:
    """``plc``: ``modbus`` or ``opcua``: every decision is written to a PLC server started on
    loopback (edge/plcsim.py) and the report has decision->PLC write latency."""
    bundle = load_bundle(bundle_path, pubkey) if pubkey else open_bundle_unverified(bundle_path)
    if precision and precision not in bundle.manifest.models:
        precision = None
    images = load_frames(source, min(distinct, frames))
    work = Path(tempfile.mkdtemp(prefix="lineqc-bench-"))
    if pubkey is None:
        # An unverified bundle still needs a command key; a throwaway one accepts no real command.
        _, pubkey = generate_keys(work / "bench-commands")
    mosquitto: Mosquitto | None = None
    if broker == "auto" and mosquitto_binary():
        mosquitto = Mosquitto(folder=work / "broker").start()
        host, port, publishing = "127.0.0.1", mosquitto.port, "mosquitto on loopback"
    elif broker not in ("auto", "none"):
        host, _, port_text = broker.rpartition(":")
        port, publishing = int(port_text), f"broker {broker}"
    else:
        host, port, publishing = "127.0.0.1", free_port(), "outbox only (no broker)"
    sim, actuator = start_plc(plc, plc_deadline_ms)
    cfg = parse_config(
        {
            "device": {"id": "bench", "site": "bench", "line": "bench"},
            "camera": {"id": "cam0", "source": str(source), "fps": 0},
            "model": {
                "bundle": str(bundle_path),
                "public_key": str(pubkey),
                "precision": precision,
                "backend": "onnxruntime",
                "threads": threads,
                "allow_failed_gate": allow_failed_gate,
            },
            "mqtt": {"host": host, "port": port, "reconnect_max_s": 2},
            "outbox": {"path": str(work / "outbox.sqlite")},
            "telemetry": {"interval_s": 3600, "window": max(frames, 16)},
            "shutdown_flush_s": 5,
            **({"actuator": actuator} if actuator else {}),
        },
        check_files=False,
    )
    try:
        runtime = Runtime(
            cfg,
            max_frames=frames,
            bundle=bundle,
            reader_factory=lambda: MemoryReader(images, frames),
        )
        x = preprocess(images[0], bundle.spec)[None]
        for _ in range(warmup):
            runtime.backend.infer(x)
        time.sleep(0.5)  # let the publisher connect before the clock starts
        if sim is not None:
            runtime.actuator.start()  # and the PLC link
            deadline = time.monotonic() + 10
            while runtime.actuator.problem() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        summary = runtime.run()
    finally:
        if mosquitto is not None:
            mosquitto.stop()
        if sim is not None:
            sim.stop()
    lat = summary["latency_ms"]
    frame_ms = 1000.0 / summary["fps"] if summary["fps"] else float("nan")
    infer_ms = lat["infer"]["p50"]
    overhead = max(0.0, 1.0 - infer_ms / frame_ms) if frame_ms == frame_ms else None
    report: dict[str, Any] = {
        "bundle": str(bundle_path),
        "model": bundle.manifest.model.name,
        "precision": runtime.backend.model_path.name,
        "gate_failure": bundle.gate_failure(precision),  # timed anyway with allow_failed_gate
        "input": [bundle.spec.channels, bundle.spec.height, bundle.spec.width],
        "backend": summary["backend"],
        "threads": threads,
        "source": str(source),
        "distinct_frames": len(images),
        "frames": summary["frames"],
        "publishing": publishing,
        "fps": summary["fps"],
        "latency_ms": {k: lat["capture_to_decision"][k] for k in ("p50", "p95", "p99")},
        "stages": {s: {k: v[k] for k in ("p50", "p95", "p99")} for s, v in lat.items()},
        "frame_time_ms": round(frame_ms, 3),
        "overhead_share": None if overhead is None else round(overhead, 3),
        "decisions": summary["decisions"],
        "outbox": summary["outbox"],
        "publisher": summary["publisher"],
    }
    if plc is not None:
        report["plc"] = plc_report(plc, plc_deadline_ms, summary["actuator"])
    if baseline:
        report["baseline"] = torch_baseline(
            bundle, images, baseline_frames or min(frames, 200), threads, warmup=5
        )
        report["speedup"] = round(report["fps"] / report["baseline"]["fps"], 2)
    report["targets"] = {
        "p99_ms<=10": report["latency_ms"]["p99"] <= TARGET_P99_MS,
        "overhead<30%": overhead is not None and overhead < TARGET_OVERHEAD,
        **({"speedup>=3x": report["speedup"] >= TARGET_SPEEDUP} if baseline else {}),
    }
    return report


def start_plc(plc: str | None, deadline_ms: float) -> tuple[Any, dict[str, Any] | None]:
    """A loopback PLC server and the actuator config that writes to it (None, None: no PLC)."""
    if plc is None:
        return None, None
    common = {"kind": plc, "deadline_ms": deadline_ms, "queue_size": 1024}
    if plc == "modbus":
        from .plcsim import ModbusSim

        msim = ModbusSim().start()
        target = {"host": "127.0.0.1", "port": msim.port, "reject_coil": 0, "id_register": 0}
        return msim, {**common, "modbus": target}
    if plc == "opcua":
        from .plcsim import OpcUaSim

        osim = OpcUaSim().start()
        nodes = {"url": osim.url, "verdict_node": osim.verdict_node, "id_node": osim.id_node}
        return osim, {**common, "opcua": nodes}
    raise ValueError(f"--plc {plc!r}: modbus or opcua")


def plc_report(plc: str, deadline_ms: float, actuator: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    package = "pymodbus" if plc == "modbus" else "asyncua"
    c = actuator["counters"]
    lat = actuator["latency_ms"].get("plc_write", {})
    return {
        "protocol": plc,
        "server": f"{package} {version(package)} on loopback",
        "deadline_ms": deadline_ms,
        "writes_ok": c.get("plc_writes_ok", 0),
        "writes_late": c.get("plc_writes_late", 0),
        "deadline_missed": c.get("plc_deadline_missed", 0),
        "reconnects": c.get("plc_reconnects", 0),
        "latency_ms": {k: lat.get(k, float("nan")) for k in ("p50", "p95", "p99", "max")},
    }


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"edge bench: {r['model']} {r['precision']} {r['input']} on {r['backend']} "
        f"({r['threads']} threads), {r['frames']} frames from memory "
        f"({r['distinct_frames']} distinct), publishing: {r['publishing']}",
        f"  capture->decision  p50 {r['latency_ms']['p50']:.2f} ms  p95 "
        f"{r['latency_ms']['p95']:.2f} ms  p99 {r['latency_ms']['p99']:.2f} ms",
        f"  throughput         {r['fps']:.1f} frames/s  (frame time {r['frame_time_ms']:.2f} ms, "
        f"overhead beyond the model {100 * (r['overhead_share'] or 0):.0f}%)",
    ]
    if r.get("gate_failure"):
        lines.append(f"  NOTE: timed although {r['gate_failure']}")
    if "plc" in r:
        p = r["plc"]
        lines.append(
            f"  decision->PLC      p50 {p['latency_ms']['p50']:.2f} ms  p95 "
            f"{p['latency_ms']['p95']:.2f} ms  p99 {p['latency_ms']['p99']:.2f} ms  "
            f"({p['server']}: {p['writes_ok']} confirmed in time, {p['deadline_missed']} "
            f"missed the {p['deadline_ms']:g} ms deadline)"
        )
    if "baseline" in r:
        b = r["baseline"]
        lines.append(
            f"  baseline           {b['fps']:.1f} frames/s  p50 {b['latency_ms']['p50']:.2f} ms  "
            f"p99 {b['latency_ms']['p99']:.2f} ms  ({b['what']})"
        )
        lines.append(f"  speedup            {r['speedup']:.2f}x")
    lines.append(f"  {'stage':<22}{'p50':>8}{'p95':>8}{'p99':>8}")
    for stage, p in r["stages"].items():
        lines.append(f"  {stage:<22}{p['p50']:>8.2f}{p['p95']:>8.2f}{p['p99']:>8.2f}")
    lines.append(
        "  targets: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in r["targets"].items())
    )
    return "\n".join(lines)
