"""Active-learning sampling: uncertain always, audits by share with per-class caps, rate limit."""

from __future__ import annotations

from lineqc.edge.config import SamplingConfig
from lineqc.edge.decision import Decision
from lineqc.edge.sampling import Sampler


def _d(verdict: str, label: str = "ok") -> Decision:
    return Decision(
        verdict, label, 0.9, "ambiguous" if verdict == "uncertain" else None, (0.9, 0.1)
    )  # type: ignore[arg-type]


def test_uncertain_always_audits_by_share() -> None:
    s = Sampler(SamplingConfig(audit_share=0.1, seed=0, default_audit_cap_per_hour=10_000))
    assert all(s.choose(_d("uncertain")) == "uncertain" for _ in range(50))
    audits = sum(s.choose(_d("ok")) == "audit" for _ in range(5000))
    assert 400 < audits < 600
    assert Sampler(SamplingConfig(uncertain=False)).choose(_d("uncertain")) is None


def test_per_class_caps_and_rate_limit_are_counted() -> None:
    now = [0.0]
    cfg = SamplingConfig(
        audit_share=1.0, audit_cap_per_hour={"ok": 3}, default_audit_cap_per_hour=5
    )
    s = Sampler(cfg, clock=lambda: now[0])
    assert [s.choose(_d("ok")) for _ in range(5)].count("audit") == 3
    assert [s.choose(_d("defect", "dent")) for _ in range(7)].count("audit") == 5
    assert s.counters["audit_capped"] == 4
    now[0] = 3601.0
    assert s.choose(_d("ok")) == "audit"  # a new hour
    r = Sampler(SamplingConfig(max_per_minute=4), clock=lambda: now[0])
    assert [r.choose(_d("uncertain")) for _ in range(6)].count("uncertain") == 4
    assert r.counters["rate_limited_uncertain"] == 2
    now[0] += 61
    assert r.choose(_d("uncertain")) == "uncertain"
