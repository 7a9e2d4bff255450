"""Latency per stage, throughput, drops and input statistics (for drift), per interval.

The hot path only writes a float into a ring buffer per stage; percentiles are computed when
a report is made (every ``interval_s``), over the last ``window`` frames.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from .drift import subsample

# queue: capture stamp to pickup; capture_to_decision: the latency that matters on the line;
# total: capture stamp until the frame's messages were handed to the publisher.
STAGES = ("queue", "preprocess", "infer", "decide", "publish", "capture_to_decision", "total")


class Ring:
    """The last ``size`` values of one measurement (milliseconds)."""

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, value: float) -> None:
        self.values[self.n % len(self.values)] = value
        self.n += 1

    def snapshot(self) -> np.ndarray:
        return self.values[: min(self.n, len(self.values))].copy()


def percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values.max()), 3),
        "n": len(values),
    }


class InputStats:
    """Per camera: mean and spread of frame brightness and contrast (on a subsample)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = self.sumsq = self.contrast = 0.0
        self.shape: tuple[int, ...] = ()

    def add(self, image: np.ndarray) -> float:
        """Count one frame; its brightness (the drift statistic, ``drift.frame_brightness``)."""
        sub = subsample(image)
        m = float(sub.mean())
        self.n += 1
        self.sum += m
        self.sumsq += m * m
        self.contrast += float(sub.std())
        self.shape = image.shape
        return m

    def report(self) -> dict[str, float]:
        if not self.n:
            return {"frames": 0}
        mean = self.sum / self.n
        var = max(self.sumsq / self.n - mean * mean, 0.0)
        return {
            "frames": self.n,
            "brightness_mean": round(mean, 3),
            "brightness_std": round(var**0.5, 3),
            "contrast_mean": round(self.contrast / self.n, 3),
            "height": self.shape[0] if self.shape else 0,
            "width": self.shape[1] if len(self.shape) > 1 else 0,
        }


class Telemetry:
    def __init__(self, window: int = 2048) -> None:
        self.window = window
        self.stages = {s: Ring(window) for s in STAGES}
        self.verdicts: collections.Counter[str] = collections.Counter()
        self.total_verdicts: collections.Counter[str] = collections.Counter()
        self.frames = 0
        self.total_frames = 0
        self.over_budget = 0
        self.inputs: dict[str, InputStats] = collections.defaultdict(InputStats)
        self.started = self.last_report = time.monotonic()

    def record(self, timings_ms: dict[str, float]) -> None:
        for stage, value in timings_ms.items():
            self.stages[stage].add(value)

    def latency(self) -> dict[str, dict[str, float]]:
        return {s: percentiles(r.snapshot()) for s, r in self.stages.items() if r.n}

    def report(self) -> dict[str, Any]:
        """The interval's figures (latency over the last ``window`` frames); starts a new one."""
        now = time.monotonic()
        interval = max(now - self.last_report, 1e-9)
        doc = {
            "interval_s": round(interval, 3),
            "frames": self.frames,
            "fps": round(self.frames / interval, 2),
            "verdicts": dict(self.verdicts),
            "latency_ms": self.latency(),
            "input": {cam: s.report() for cam, s in self.inputs.items()},
        }
        self.frames = 0
        self.verdicts.clear()
        self.inputs = collections.defaultdict(InputStats)
        self.last_report = now
        return doc
