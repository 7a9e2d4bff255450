"""`lineqc edge bench --json` reports what the acceptance checks read."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_json_fields(lineqc, edge_bundle) -> None:
    proc = lineqc(
        "edge", "bench", "--bundle", str(edge_bundle.bundle), "--source",
        str(edge_bundle.images / "**" / "*.png"), "--frames", "60", "--baseline-frames", "20",
        "--json",
    )  # fmt: skip
    r = json.loads(proc.stdout)
    assert r["frames"] == 60 and r["fps"] > 0
    assert set(r["latency_ms"]) >= {"p50", "p99"}
    assert {"preprocess", "infer", "decide", "publish"} <= set(r["stages"])
    assert all(set(v) >= {"p50", "p99"} for v in r["stages"].values())
    assert r["baseline"]["fps"] > 0 and set(r["baseline"]["latency_ms"]) >= {"p50", "p99"}
    assert 0 <= r["overhead_share"] <= 1 and r["outbox"]["left"] == 0
