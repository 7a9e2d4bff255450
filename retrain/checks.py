"""The retrain gate: challenger against champion, check by check, on the same images.

Each check is one figure (macro-F1, a class's recall, macro-F1 of one capture session or
source) measured for both models on the same rows of a slice. Models judged as deployed
(bundles with their decision policies, ``lineqc.export.judge``) add the policy's figures,
where lower is better: the share of OK frames rejected, of defects passed as OK, and of
frames sent to review. What decides is not the two
point values but the paired difference, challenger minus champion, with its 95% interval
from resampling parts (both models judged on every resample), and the support the figure
rests on. A check is

- ``few``: fewer than ``min_support`` images (for a class's recall: images of that class),
  or no interval: too little to judge, listed and not counted;
- ``worse``: the whole interval lies below ``-tolerance`` (above ``tolerance`` for a figure
  where lower is better);
- ``better``: the whole interval lies above 0 (below 0 where lower is better);
- ``same``: otherwise, a difference within noise.

The challenger is promoted when no check is worse and at least one is better. On slices of a
few dozen images most checks are ``same`` or ``few``, and the champion stays: a difference of
one image is not evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lineqc.train import intervals as ci

if TYPE_CHECKING:  # torch: imported when a comparison runs, not for `lineqc --help`
    from lineqc.export.judge import Judged
    from lineqc.train.evaluate import SplitResult

    Evaluated = SplitResult | Judged  # a checkpoint's evaluation, or a bundle's as deployed

SLICE_KINDS = ("session", "source")  # the sliced figures compared per value
MIN_SUPPORT = 20  # images a check must rest on to be judged
OUTCOMES = ("better", "worse", "same", "few")

Figures = Callable[[np.ndarray], dict[str, float | None]]

# The decision policy's figures (models judged with their policies only): the share of the
# rows each rests on whose verdict is the one named. Lower is better for all three.
POLICY_FIGURES = {
    "OK frames rejected": "defect",  # rests on the OK frames
    "defects passed as OK": "ok",  # on the defect frames
    "frames sent to review": "uncertain",  # on every frame
}


@dataclass(frozen=True)
class Check:
    slice: str  # test | recent_reviewed | recent_audit
    what: str  # "macro-F1", "recall of class scratch", "macro-F1 of source dev1/cam0"
    champion: float
    challenger: float
    support: int  # images the figure rests on
    parts: int  # distinct parts among them
    interval: tuple[float, float] | None  # challenger - champion, paired 95% over parts
    outcome: str  # one of OUTCOMES
    lower_is_better: bool = False  # a policy figure (POLICY_FIGURES)

    @property
    def delta(self) -> float:
        return self.challenger - self.champion

    @property
    def ok(self) -> bool:
        return self.outcome != "worse"

    @property
    def difference(self) -> str:
        """``+0.012 [-0.031, +0.054]``: the difference and its interval."""
        lo_hi = f" [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}]" if self.interval else ""
        return f"{self.delta:+.3f}{lo_hi}"

    def sentence(self) -> str:
        verb = "rose" if self.delta > 0 else "fell" if self.delta < 0 else "stayed"
        return (
            f"{self.slice}: {self.what} {verb} {self.champion:.3f} -> {self.challenger:.3f} "
            f"({self.difference}; {self.support} images of {self.parts} parts)"
        )


def _figures(result: Evaluated) -> tuple[Figures, dict[str, np.ndarray]]:
    """A function computing every figure of one model on some rows, and the rows (of all)
    each figure rests on."""
    from lineqc.train.metrics import macro_f1

    classes: list[str] = list(result.metrics["classes"])
    labels, preds = result.labels, result.logits.argmax(axis=1)
    known = labels >= 0
    every = np.arange(len(labels))
    basis: dict[str, np.ndarray] = {"macro-F1": every[known]}
    for i, name in enumerate(classes):
        if (labels == i).any():  # a class absent from the slice has no recall
            basis[f"recall of class {name}"] = every[labels == i]
    for kind in SLICE_KINDS:
        keys = np.array([str(getattr(r, kind)) for r in result.records], dtype=object)
        values = sorted({str(getattr(r, kind)) for r in result.records if getattr(r, kind)})
        if len(values) < 2:  # one value covering every image repeats the overall figure
            continue
        for value in values:
            basis[f"macro-F1 of {kind} {value}"] = every[known & (keys == value)]

    from lineqc.export.judge import Judged

    hits: dict[str, np.ndarray] = {}
    if isinstance(result, Judged):  # a model judged with its policy
        ok_rows = labels == result.ok_index
        given = np.asarray(result.verdicts, dtype=object)
        for (what, verdict), rows in zip(
            POLICY_FIGURES.items(), (ok_rows, ~ok_rows, np.ones_like(ok_rows)), strict=True
        ):
            basis[what] = every[rows]
            hits[what] = given == verdict

    def figures(rows: np.ndarray) -> dict[str, float | None]:
        # A resample repeats parts: each row counts as often as it was drawn.
        weight = np.bincount(rows, minlength=len(labels)).astype(float)
        out: dict[str, float | None] = {}
        for what, base in basis.items():
            w = weight[base]
            if not w.any():
                out[what] = None
            elif what in hits:
                out[what] = float(w @ hits[what][base] / w.sum())
            elif what.startswith("recall of class "):
                out[what] = float(w @ (preds[base] == labels[base]) / w.sum())
            else:
                cm = np.zeros((len(classes), len(classes)))
                np.add.at(cm, (labels[base], preds[base]), w)
                out[what] = macro_f1(cm)
        return out

    return figures, basis


def compare(
    slice_name: str,
    champion: Evaluated,
    challenger: Evaluated,
    tolerance: float = 0.0,
    min_support: int = MIN_SUPPORT,
) -> tuple[list[Check], list[str]]:
    """The checks of one slice (both results on the same rows), and what could not be
    compared (a figure only one model can measure, such as a class one of them lacks)."""
    if [r.id for r in champion.records] != [r.id for r in challenger.records]:
        raise ValueError(f"{slice_name}: the models were evaluated on different images")
    fig_a, basis_a = _figures(champion)
    fig_b, basis_b = _figures(challenger)
    common = sorted(basis_a.keys() & basis_b.keys(), key=lambda w: (w != "macro-F1", w))
    skipped = [
        f"{slice_name}: {w} (measurable for only one model)"
        for w in sorted(basis_a.keys() ^ basis_b.keys())
    ]

    def deltas(rows: np.ndarray) -> dict[str, float | None]:
        a, b = fig_a(rows), fig_b(rows)
        out: dict[str, float | None] = {}
        for w in common:
            va, vb = a[w], b[w]
            out[w] = None if va is None or vb is None else vb - va
        return out

    clusters = ci.cluster_ids(ci.parts_of(champion.records), len(champion.labels))
    spans = ci.intervals(deltas, clusters)
    every = np.arange(len(champion.labels))
    a, b = fig_a(every), fig_b(every)
    checks = []
    for what in common:
        va, vb = a[what], b[what]
        if va is None or vb is None:
            skipped.append(f"{slice_name}: {what} (no labelled images)")
            continue
        support = int(basis_a[what].size)
        interval = spans.get(what)
        checks.append(
            Check(
                slice_name,
                what,
                va,
                vb,
                support,
                int(np.unique(clusters[basis_a[what]]).size),
                interval,
                outcome(interval, support, tolerance, min_support, what in POLICY_FIGURES),
                what in POLICY_FIGURES,
            )
        )
    return checks, skipped


def outcome(
    interval: Sequence[float] | None,
    support: int,
    tolerance: float,
    min_support: int,
    lower_is_better: bool = False,
) -> str:
    if interval is None or support < min_support:
        return "few"
    if lower_is_better:  # judged as the improvement, champion minus challenger
        interval = (-interval[1], -interval[0])
    if interval[1] < -tolerance:
        return "worse"
    if interval[0] > 0:
        return "better"
    return "same"


VERDICTS = {
    "promoted": "PROMOTED: the challenger is credibly better on some check and worse on none",
    "worse": "the challenger is credibly worse on some check",
    "no-better": "no evidence: the challenger is credibly better on no check",
    "nothing-compared": "nothing to compare",
    "identical": "the challenger is the champion again (the same predictions on every image)",
    "not-retrained": "no new training rows since the champion",
    "gate-failed": "the challenger's INT8 model failed the accuracy gate: it cannot be deployed",
}


@dataclass
class GateDecision:
    promoted: bool
    forced: bool
    reasons: list[str]
    kind: str = "promoted"  # a key of VERDICTS

    @property
    def compared(self) -> bool:
        return self.kind not in ("nothing-compared", "not-retrained", "gate-failed")

    @property
    def export(self) -> bool:
        """A bundle is made of a promoted or forced challenger, never of the champion again."""
        return (self.promoted or self.forced) and self.kind not in (
            "identical",
            "not-retrained",
            "gate-failed",
        )

    @property
    def verdict(self) -> str:
        why = VERDICTS[self.kind]
        if self.promoted:
            return why
        if self.kind == "not-retrained":
            return f"NOT RETRAINED: {why}"
        if self.forced and self.export:
            return f"FORCED: {why}; exported anyway"
        return f"KEPT CHAMPION: {why}"


def decide(
    checks: list[Check],
    evaluated: list[str],
    force: bool,
    identical: bool = False,
    min_support: int = MIN_SUPPORT,
) -> GateDecision:
    """Promoted only on evidence: credibly worse on no check, credibly better on at least
    one, not the same model (``identical``: the same predictions on every evaluated image)."""
    if identical:
        reasons = [
            "the challenger's outputs equal the champion's on every evaluated image: the same "
            "model, so nothing is promoted or signed (not even with --force)"
        ]
        return GateDecision(False, force, reasons, "identical")
    if not checks:
        reasons = [
            "nothing to compare on: no frozen test split and no recent reviewed frames"
            if not evaluated
            else f"no comparable figure on {', '.join(evaluated)}"
        ]
        return GateDecision(False, force, reasons, "nothing-compared")
    by = {o: [c for c in checks if c.outcome == o] for o in OUTCOMES}
    judged = len(checks) - len(by["few"])
    few = (
        f"; {len(by['few'])} check(s) rest on fewer than {min_support} images and are not judged"
        if by["few"]
        else ""
    )
    if by["worse"]:
        reasons = [f"credibly worse on {len(by['worse'])} of {judged} judged checks{few}:"]
        return GateDecision(False, force, reasons + [c.sentence() for c in by["worse"]], "worse")
    if not by["better"]:
        reasons = [
            f"on all {judged} judged checks over {', '.join(evaluated)} the 95% interval of "
            f"the difference holds 0 (within noise){few}: no evidence that the challenger "
            "improves on the champion"
        ]
        return GateDecision(False, force, reasons, "no-better")
    reasons = [
        f"credibly better on {len(by['better'])} and credibly worse on none of {judged} judged "
        f"checks over {', '.join(evaluated)}{few}:"
    ]
    return GateDecision(True, force, reasons + [c.sentence() for c in by["better"]])
