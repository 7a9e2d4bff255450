"""How well inspectors agree: Cohen's kappa per inspector pair, overall and per class.

Over the frames both inspectors of a pair answered (gold frames included: everyone answers
those). Skips are not answers and are left out. "Unsure" is kept as a category of its own in
the overall kappa (two inspectors who are both unsure agree on that), and counts as "not
this class" in the per-class (one-vs-rest) kappa.

Kappa is undefined when chance agreement is 1, i.e. both inspectors gave one and the same
answer to every shared frame: nothing distinguishes skill from luck then, so it is reported
as None ("n/a"), not as perfect agreement (scikit-learn returns NaN there).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from .store import UNSURE


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' answers on the same items; None when undefined."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} answers against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    # In counts, exactly: kappa = (p_o - p_e) / (1 - p_e) with p_o = agree / n and
    # p_e = sum_k ca_k * cb_k / n^2; the denominator is 0 only in the degenerate case.
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[k] * cb[k] for k in ca)
    denominator = n * n - chance
    if denominator == 0:
        return None
    return (agree * n - chance) / denominator


@dataclass(frozen=True)
class PairAgreement:
    first: str
    second: str
    shared: int  # frames both answered
    kappa: float | None
    per_class: dict[str, float | None]  # one-vs-rest


def pair_agreement(answers: Mapping[int, Mapping[str, str]]) -> list[PairAgreement]:
    """Every pair of inspectors that answered a frame in common.

    ``answers``: frame -> {inspector: answer}, skips already left out.
    """
    inspectors = sorted({name for per_frame in answers.values() for name in per_frame})
    out = []
    for first, second in combinations(inspectors, 2):
        shared = [(f[first], f[second]) for f in answers.values() if first in f and second in f]
        if not shared:
            continue
        a = [x for x, _ in shared]
        b = [y for _, y in shared]
        classes = sorted(set(a) | set(b))
        per_class = {
            c: cohen_kappa([x == c for x in a], [y == c for y in b]) for c in classes if c != UNSURE
        }
        out.append(PairAgreement(first, second, len(shared), cohen_kappa(a, b), per_class))
    return out
