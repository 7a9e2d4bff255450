"""The retrain gate judges paired differences with intervals over parts and a minimum
support: a one-image difference is noise, a clear gain on enough parts is evidence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from lineqc.datasets import manifest as mf
from lineqc.export.judge import Judged
from lineqc.retrain.checks import compare, decide
from lineqc.retrain.job import recent_audit, recent_reviewed
from lineqc.train.evaluate import SplitResult

CLASSES = ["ok", "crack", "chip"]


def rows(n: int, shots_per_part: int = 2, sessions: int = 2) -> list[mf.Record]:
    return [
        mf.Record(
            id=f"r{i}",
            path=f"images/{i}.png",
            sha256="0" * 64,
            width=8,
            height=8,
            channels=1,
            label=CLASSES[i % 3],
            source="line1/cam0",
            session=f"s{i % sessions}",
            group=f"part{i // shots_per_part}",
        )
        for i in range(n)
    ]


def result(records: list[mf.Record], preds: np.ndarray) -> SplitResult:
    labels = np.array([CLASSES.index(str(r.label)) for r in records])
    logits = np.eye(len(CLASSES))[preds] * 5.0
    return SplitResult({"classes": CLASSES}, records, labels, logits)


def with_errors(records: list[mf.Record], wrong: np.ndarray) -> np.ndarray:
    """Predictions equal to the labels except at ``wrong`` (shifted to the next class)."""
    preds = np.array([CLASSES.index(str(r.label)) for r in records])
    preds[wrong] = (preds[wrong] + 1) % len(CLASSES)
    return preds


def test_a_clear_gain_on_many_parts_is_promoted() -> None:
    records = rows(300)
    champion = result(records, with_errors(records, np.arange(0, 300, 3)))  # 100 wrong
    challenger = result(records, with_errors(records, np.arange(0, 300, 30)))  # 10 wrong
    checks, skipped = compare("test", champion, challenger)
    overall = next(c for c in checks if c.what == "macro-F1")
    assert overall.outcome == "better" and overall.interval[0] > 0
    assert overall.support == 300 and overall.parts == 150 and not skipped
    assert {c.what for c in checks} >= {"recall of class ok", "macro-F1 of session s1"}
    decision = decide(checks, ["test (n=300)"], force=False)
    assert decision.promoted and decision.verdict.startswith("PROMOTED")


def test_one_image_better_is_noise_not_evidence() -> None:
    records = rows(60)
    champion = result(records, with_errors(records, np.array([0, 10, 20, 30])))
    challenger = result(records, with_errors(records, np.array([10, 20, 30])))
    checks, _ = compare("test", champion, challenger)
    overall = next(c for c in checks if c.what == "macro-F1")
    assert overall.delta > 0 and overall.outcome == "same"
    assert overall.interval[0] <= 0 <= overall.interval[1]
    decision = decide(checks, ["test (n=60)"], force=False)
    assert not decision.promoted and decision.kind == "no-better"
    assert "holds 0" in decision.reasons[0]


def test_credibly_worse_is_refused_and_the_tolerance_forgives_it() -> None:
    records = rows(300)
    champion = result(records, with_errors(records, np.arange(0, 300, 30)))
    challenger = result(records, with_errors(records, np.arange(0, 300, 3)))
    checks, _ = compare("test", champion, challenger)
    decision = decide(checks, ["test"], force=True)
    assert decision.kind == "worse" and not decision.promoted and decision.export
    assert decision.reasons[0].startswith("credibly worse on") and " fell " in decision.reasons[1]
    lenient, _ = compare("test", champion, challenger, tolerance=1.0)
    assert not any(c.outcome == "worse" for c in lenient)


def test_a_check_on_few_images_is_not_judged() -> None:
    records = rows(300)
    champion_preds = with_errors(records, np.arange(0, 300, 3))
    challenger_preds = with_errors(records, np.arange(0, 300, 30))
    # Twelve images of session s9, all wrong for the challenger and right for the champion.
    for i in range(12):
        records[i].session = "s9"
        champion_preds[i] = CLASSES.index(str(records[i].label))
        challenger_preds[i] = (champion_preds[i] + 1) % 3
    champion, challenger = result(records, champion_preds), result(records, challenger_preds)
    checks, _ = compare("test", champion, challenger, min_support=20)
    s9 = next(c for c in checks if c.what == "macro-F1 of session s9")
    assert s9.support == 12 and s9.delta < 0 and s9.outcome == "few"
    decision = decide(checks, ["test"], force=False, min_support=20)
    assert "1 check(s) rest on fewer than 20 images" in decision.reasons[0]
    assert not any("session s9" in r for r in decision.reasons)
    strict, _ = compare("test", champion, challenger, min_support=10)
    assert next(c for c in strict if c.what == "macro-F1 of session s9").outcome == "worse"


def test_identical_and_mismatched_evaluations() -> None:
    records = rows(60)
    same = result(records, with_errors(records, np.array([1])))
    checks, _ = compare("test", same, same)
    assert all(c.delta == 0 and c.outcome in ("same", "few") for c in checks)
    assert decide(checks, ["test"], force=True, identical=True).export is False
    with pytest.raises(ValueError, match="different images"):
        compare("test", same, result(rows(60)[::-1], with_errors(records, np.array([1]))))


def test_the_audit_slice_holds_recent_random_audits_only() -> None:
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    base = rows(4)
    for r, why in zip(base, ["audit", "uncertain", "audit", "audit"], strict=True):
        r.label_source, r.extra, r.split = "inspector:ann", {"why": why}, "val"
        r.captured_at = now.isoformat()
    base[2].split = "train"  # trained on: judged nowhere
    base[3].captured_at = (now - timedelta(days=90)).isoformat()  # not recent
    since = now - timedelta(days=30)
    assert [r.id for r in base if recent_reviewed(since)(r)] == ["r0", "r1"]
    assert [r.id for r in base if recent_audit(since)(r)] == ["r0"]


def judged(records: list[mf.Record], verdicts: list[str]) -> Judged:
    """A model judged with its policy: argmax right everywhere, the verdicts as given."""
    base = result(records, with_errors(records, np.array([], dtype=int)))
    return Judged(base.metrics, records, base.labels, base.logits, verdicts, ok_index=0)


def test_deployed_models_are_also_judged_on_their_policies_where_lower_is_better() -> None:
    records = rows(300)
    truth = ["ok" if r.label == "ok" else "defect" for r in records]
    # The champion sends every third frame to review; the challenger decides all but 10.
    champion = judged(records, ["uncertain" if i % 3 == 0 else v for i, v in enumerate(truth)])
    challenger = judged(records, ["uncertain" if i % 30 == 0 else v for i, v in enumerate(truth)])
    checks, _ = compare("test", champion, challenger)
    by = {c.what: c for c in checks}
    review = by["frames sent to review"]
    assert review.lower_is_better and review.champion == 100 / 300
    assert review.challenger == 10 / 300 and review.delta < 0 and review.outcome == "better"
    assert by["OK frames rejected"].support == 100 and by["OK frames rejected"].outcome == "same"
    assert by["defects passed as OK"].support == 200
    assert not by["macro-F1"].lower_is_better and by["macro-F1"].outcome == "same"
    assert decide(checks, ["test"], force=False).promoted

    # The other way round: more frames to review is credibly worse, and blocks promotion.
    backwards, _ = compare("test", challenger, champion)
    assert {c.what: c for c in backwards}["frames sent to review"].outcome == "worse"
    assert decide(backwards, ["test"], force=False).kind == "worse"

    # OK frames rejected on the challenger: a rise there is worse even though it "rose".
    leaky_verdicts = [
        "defect" if r.label == "ok" and i % 2 else v
        for i, (r, v) in enumerate(zip(records, truth, strict=True))
    ]
    leaky = judged(records, leaky_verdicts)
    rejects = {c.what: c for c in compare("test", judged(records, truth), leaky)[0]}
    assert (
        rejects["OK frames rejected"].delta > 0 and rejects["OK frames rejected"].outcome == "worse"
    )
