"""Model-only latency on this machine: median and 99th percentile of single-frame runs."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from lineqc.edge.preprocess import PreprocessSpec

from . import runtime


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "reps": int(ms.size),
    }


def measure(
    fns: Mapping[str, Callable[[], object]], reps: int = 200, warmup: int = 20, rounds: int = 10
) -> dict[str, dict[str, float]]:
    """p50/p99/mean in milliseconds of ``reps`` calls of each function, after warmup.

    The functions take turns in ``rounds`` chunks, so that load from other processes on a
    shared machine falls on all of them alike and their ratio stays meaningful.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    chunk = max(1, reps // rounds)
    for _ in tqdm(range(rounds), desc=f"latency ({', '.join(fns)})", leave=False):
        for name, fn in fns.items():
            for _ in range(chunk):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: _stats(np.asarray(t) * 1e3) for name, t in times.items()}


def onnx_runner(path: Path, spec: PreprocessSpec, threads: int = 2) -> Callable[[], object]:
    """One batch-1 inference of an ONNX model, ready to time."""
    sess = runtime.session(path, threads)
    feed = {sess.get_inputs()[0].name: example_input(spec)}
    return lambda: sess.run(None, feed)


def example_input(spec: PreprocessSpec, batch: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (batch, spec.channels, spec.height, spec.width)
    return rng.standard_normal(shape).astype(np.float32)


def environment(threads: int) -> dict[str, Any]:
    """Where the latency was measured: it only means something on that machine."""
    return {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "intra_op_threads": threads,
        "batch": 1,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
