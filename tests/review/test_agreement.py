"""Cohen's kappa against scikit-learn, its degenerate cases, and agreement per inspector pair."""

from __future__ import annotations

import math
import random

import pytest
from sklearn.metrics import cohen_kappa_score

from lineqc.review.agreement import cohen_kappa, pair_agreement

LABELS = ["ok", "scratch", "dent", "unsure"]


@pytest.mark.parametrize("seed", range(30))
def test_kappa_matches_sklearn_on_random_raters(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    a = [rng.choice(LABELS) for _ in range(n)]
    # the second rater copies the first with some probability: the whole range of kappa
    b = [x if rng.random() < rng.random() else rng.choice(LABELS) for x in a]
    expected = cohen_kappa_score(a, b)
    if math.isnan(expected):
        assert cohen_kappa(a, b) is None
    else:
        assert cohen_kappa(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["ok", "ok", "dent"], ["ok", "ok", "dent"]),  # perfect: 1
        (["ok", "dent", "ok", "dent"], ["dent", "ok", "dent", "ok"]),  # perfect disagreement
        (["ok", "ok", "ok", "dent"], ["ok", "ok", "ok", "ok"]),  # one rater constant: 0
        ([True, False, True], [True, True, True]),  # booleans (one-vs-rest)
    ],
)
def test_kappa_matches_sklearn_on_edge_cases(a: list[object], b: list[object]) -> None:
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_is_undefined_when_chance_agreement_is_one() -> None:
    # both raters gave one and the same answer to everything: 0/0 (sklearn: NaN + warning)
    assert cohen_kappa(["ok"] * 5, ["ok"] * 5) is None
    assert cohen_kappa([], []) is None


def test_kappa_refuses_unpaired_answers() -> None:
    with pytest.raises(ValueError, match="3 answers against 2"):
        cohen_kappa(["ok"] * 3, ["ok"] * 2)


def test_pair_agreement_uses_shared_frames_only() -> None:
    answers = {
        1: {"ann": "ok", "bob": "ok", "cy": "dent"},
        2: {"ann": "scratch", "bob": "dent"},
        3: {"ann": "dent", "bob": "dent"},
        4: {"ann": "unsure", "bob": "unsure"},
        5: {"cy": "ok"},  # nobody to compare with
    }
    pairs = {(p.first, p.second): p for p in pair_agreement(answers)}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    ab = pairs[("ann", "bob")]
    a, b = ["ok", "scratch", "dent", "unsure"], ["ok", "dent", "dent", "unsure"]
    assert ab.shared == 4
    assert ab.kappa == pytest.approx(cohen_kappa_score(a, b))
    # per class, one-vs-rest; "unsure" is not a class
    assert set(ab.per_class) == {"ok", "scratch", "dent"}
    for c in ("ok", "dent"):
        expected = cohen_kappa_score([x == c for x in a], [y == c for y in b])
        assert ab.per_class[c] == pytest.approx(expected)
    ac = pairs[("ann", "cy")]
    assert ac.shared == 1 and ac.kappa == pytest.approx(cohen_kappa_score(["ok"], ["dent"]))
