"""The INT8 gate's table reads the right way round: a figure that rose is fine whatever its
size, one that fell says by how much against how far it may fall, and each row says whether
it held."""

from __future__ import annotations

import numpy as np

from lineqc.edge.outputs import ANOMALY, LOGITS
from lineqc.export.gate import GateLimits, run_gate


def _row(table: str, metric: str) -> str:
    (line,) = [line for line in table.splitlines() if line.strip().startswith(metric)]
    return line


def test_a_rise_is_ok_and_a_fall_beyond_its_limit_fails() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 30)
    score = labels + rng.normal(0, 0.6, labels.size)  # FP32: a fair defect score
    fp32 = np.stack([-score, score], axis=1)
    better = labels + rng.normal(0, 0.2, labels.size)  # INT8 here separates better ...
    int8 = np.stack([-better, better], axis=1)
    anomaly_fp32, anomaly_int8 = score, score[::-1].copy()  # ... but its anomaly score is noise
    result = run_gate(
        {LOGITS: fp32, ANOMALY: anomaly_fp32},
        {LOGITS: int8, ANOMALY: anomaly_int8},
        labels,
        ["ok", "defect"],
        0,
        1.0,
        GateLimits(min_agreement=0.5),
    )
    table = result.table()
    auroc = _row(table, "AUROC defect vs OK")
    assert result.auroc_int8 > result.auroc_fp32 + 0.005  # rose by more than the fall allowed
    assert " rose " in auroc and "may fall 0.0050" in auroc and auroc.endswith(" ok")
    anomaly = _row(table, "anomaly score AUROC")
    assert " fell " in anomaly and anomaly.endswith("FAILED")
    assert _row(table, "top-1 agreement").endswith(" ok")
    assert "reported, no limit" in _row(table, "recall @ 95% precision")
    assert _row(table, "macro-F1").endswith("FAILED") == (
        result.macro_f1_fp32 - result.macro_f1_int8 > 0.01
    )
    last = table.splitlines()[-1]
    assert not result.passed and last.startswith("  FAILED: ") and "anomaly AUROC dropped" in last
    assert all(" rose " not in line or not line.endswith("FAILED") for line in table.splitlines())
