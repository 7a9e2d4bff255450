"""`lineqc bundle info` says what each threshold of the decision policy does, rounded."""

from __future__ import annotations

from lineqc.export.cli_bundle import summary


def test_thresholds_are_rounded_and_explained() -> None:
    doc = {
        "model": {"name": "m", "version": "1.0", "run_id": "r"},
        "classes": ["crack", "ok"],
        "ok_class": "ok",
        "decision": {
            "temperature": 1.2345678,
            "prob_floor": 0.41234567,
            "margin": 0.0598765,
            "thresholds": {"crack": 0.912345678, "ok": None},
            "anomaly_threshold": 12.3456789,
        },
        "evaluation": {
            "decision_on_val": {
                "target_precision": 0.95,
                "n_val": 80,
                "review_share_val": 0.0625,
                "review_share_band_val": 0.05,
                "review_share_target": 0.05,
                "anomaly_share_target": 0.02,
            }
        },
    }
    text = summary(doc)
    assert "0.912345678" not in text and "12.3456789" not in text
    assert "temperature       1.235  logits are divided by it" in text
    assert "probability floor 0.412  a top class below it: review" in text
    assert "margin            0.060  top two classes closer than it: review" in text
    assert "crack             0.912" in text
    assert "ok                always review" in text
    assert "the lowest that kept 95% precision on validation" in text
    assert "anomaly threshold 12.35  a frame the classes call OK that scores at least" in text
    assert "(2% of the OK validation frames reach it)" in text
    assert "6% of the frames went to review" in text
    doc["decision"]["anomaly_threshold"] = None
    assert "anomaly threshold none" in summary(doc)
