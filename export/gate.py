"""The accuracy gate: the INT8 model against FP32 on the validation split.

Checks top-1 agreement, the change in macro-F1 and in defect-vs-OK AUROC; reports recall at
95% precision too. A model with a defect map has it checked too: the mean absolute change of
its probabilities, and the change in the AUROC of the map's maximum as a defect score; one
with an anomaly score, the change in that score's AUROC. The metric functions are
training's (``lineqc.train.metrics``), so that export and evaluation measure the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lineqc.edge.decision import softmax
from lineqc.edge.outputs import ANOMALY, DEFECT_MAP, LOGITS
from lineqc.train.intervals import fmt_ci
from lineqc.train.metrics import per_class, roc_auc, summary, with_intervals


@dataclass(frozen=True)
class GateLimits:
    min_agreement: float = 0.99
    max_macro_f1_drop: float = 0.01  # one point
    max_auroc_drop: float = 0.005
    max_map_mae: float = 0.02  # defect map: mean |probability change| per cell
    max_map_auroc_drop: float = 0.01  # defect map: AUROC of its maximum as a defect score
    max_anomaly_auroc_drop: float = 0.01  # anomaly score: AUROC as a defect score


@dataclass
class GateResult:
    n: int
    agreement: float
    macro_f1_fp32: float
    macro_f1_int8: float
    auroc_fp32: float | None
    auroc_int8: float | None
    recall95_fp32: float | None
    recall95_int8: float | None
    per_class: list[dict[str, Any]]  # worst first
    failures: list[str]
    limits: GateLimits
    kept_fp32: list[str] = field(default_factory=list)  # layers left unquantized
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    # precision -> figure -> bootstrap 95% interval (resampling parts); what they rest on
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)
    # a DefectNet's map: mae, map_auroc_fp32, map_auroc_int8
    defect_map: dict[str, float | None] | None = None
    anomaly: dict[str, float | None] | None = None  # auroc_fp32, auroc_int8

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst_classes(self, k: int = 3) -> list[str]:
        return [c["class"] for c in self.per_class[:k]]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["passed"] = self.passed
        doc["worst_classes"] = self.worst_classes()
        return doc

    def table(self) -> str:
        """The gate for a person: each figure's change in words (rose, fell, same), the
        limit as how far it may fall, and whether it held."""
        lim = self.limits
        ci = self._with_ci
        rows = [
            ("top-1 agreement", "", _fmt(self.agreement), "", f"at least {lim.min_agreement:.4f}",
             _held(self.agreement >= lim.min_agreement)),
            ("macro-F1", ci("fp32", "macro_f1", self.macro_f1_fp32),
             ci("int8", "macro_f1", self.macro_f1_int8),
             *_fall(self.macro_f1_fp32, self.macro_f1_int8, lim.max_macro_f1_drop)),
            ("AUROC defect vs OK", ci("fp32", "auroc_defect_vs_ok", self.auroc_fp32),
             ci("int8", "auroc_defect_vs_ok", self.auroc_int8),
             *_fall(self.auroc_fp32, self.auroc_int8, lim.max_auroc_drop)),
            ("recall @ 95% precision", ci("fp32", "recall_at_95_precision", self.recall95_fp32),
             ci("int8", "recall_at_95_precision", self.recall95_int8),
             _change(self.recall95_fp32, self.recall95_int8), "reported, no limit", ""),
        ]  # fmt: skip
        if self.defect_map is not None:
            m = self.defect_map
            mae = m["mae"]
            rows.append(
                ("defect map |change|", "", _fmt(mae), "", f"mean at most {lim.max_map_mae:.4f}",
                 "n/a" if mae is None else _held(mae <= lim.max_map_mae))
            )  # fmt: skip
            a, b = m["map_auroc_fp32"], m["map_auroc_int8"]
            rows.append(
                ("defect map max AUROC", _fmt(a), _fmt(b), *_fall(a, b, lim.max_map_auroc_drop))
            )
        if self.anomaly is not None:
            a, b = self.anomaly["auroc_fp32"], self.anomaly["auroc_int8"]
            rows.append(
                ("anomaly score AUROC", _fmt(a), _fmt(b), *_fall(a, b, lim.max_anomaly_auroc_drop))
            )
        lines = [f"INT8 accuracy gate on {self._support_text()}"]
        head = ("metric", "FP32", "INT8", "INT8 vs FP32", "limit", "check")
        lines += [_row(head)] + [_row(r) for r in rows]
        lines += self._details()
        lines.append("  PASSED" if self.passed else "  FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)

    def _with_ci(self, precision: str, key: str, value: float | None) -> str:
        return fmt_ci(value, self.intervals.get(precision, {}).get(key))

    def _support_text(self) -> str:
        s = self.support
        if not s:
            return f"{self.n} validation images"
        return (
            f"{s['images']} validation images of {s['parts']} parts ({s['defect_images']} "
            f"defect, {s['ok_images']} OK); [95% bootstrap interval over parts]"
        )

    def _details(self) -> list[str]:
        """Worst classes, layers kept in FP32, latency."""
        lines = ["  worst classes (F1 FP32 -> INT8, agreement):"]
        for c in self.per_class[:3]:
            lines.append(
                f"    {c['class']:20s} {c['f1_fp32']:.4f} -> {c['f1_int8']:.4f}"
                f"  agreement {_fmt(c['agreement'])}  (n={c['support']})"
            )
        if self.kept_fp32:
            lines.append(f"  layers kept in FP32: {', '.join(self.kept_fp32)}")
        for precision, lat in self.latency_ms.items():
            lines.append(
                f"  latency {precision:5s} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms"
            )
        return lines


SAME = 5e-5  # changes under this show as "same" at four decimals


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _change(a: float | None, b: float | None) -> str:
    """INT8 against FP32 in words: 'rose 0.0120', 'fell 0.0030', 'same'."""
    if a is None or b is None:
        return "n/a"
    d = b - a
    return "same" if abs(d) < SAME else f"{'rose' if d > 0 else 'fell'} {abs(d):.4f}"


def _held(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def _fall(a: float | None, b: float | None, limit: float) -> tuple[str, str, str]:
    """(change, limit, check) of a figure that may fall at most ``limit``; a rise is fine."""
    check = "n/a" if a is None or b is None else _held(a - b <= limit)
    return _change(a, b), f"may fall {limit:.4f}", check


def _row(r: tuple[str, ...]) -> str:
    return f"  {r[0]:24s} {r[1]:>22s} {r[2]:>22s}  {r[3]:13s} {r[4]:20s} {r[5]}".rstrip()


def run_gate(
    fp32: Mapping[str, np.ndarray],
    int8: Mapping[str, np.ndarray],
    labels: np.ndarray,
    classes: Sequence[str],
    ok_index: int,
    temperature: float,
    limits: GateLimits = GateLimits(),
    clusters: Sequence[str | None] | None = None,
) -> GateResult:
    """The INT8 model's outputs (``lineqc.edge.outputs``, by name) against the FP32 model's
    on the validation images. ``clusters``: each image's part, which the bootstrap
    intervals resample."""
    p32, p8 = softmax(fp32[LOGITS], temperature), softmax(int8[LOGITS], temperature)
    s32, s8 = summary(p32, labels, classes, ok_index), summary(p8, labels, classes, ok_index)
    same = p32.argmax(axis=1) == p8.argmax(axis=1)
    c32, c8 = per_class(p32, labels, classes), per_class(p8, labels, classes)
    rows = []
    for i, name in enumerate(classes):
        of_class = labels == i
        rows.append(
            {
                "class": name,
                "support": int(of_class.sum()),
                "f1_fp32": c32[name]["f1"],
                "f1_int8": c8[name]["f1"],
                "agreement": float(same[of_class].mean()) if of_class.any() else None,
            }
        )
    # worst first: most disagreement among the class's images plus its F1 loss
    rows.sort(
        key=lambda r: ((r["agreement"] or 1.0) - max(0.0, r["f1_fp32"] - r["f1_int8"]), r["class"])
    )

    agreement = float(same.mean())
    failures = []
    if agreement < limits.min_agreement:
        failures.append(f"top-1 agreement {agreement:.4f} < {limits.min_agreement}")
    f1_drop = s32["macro_f1"] - s8["macro_f1"]
    if f1_drop > limits.max_macro_f1_drop:
        failures.append(f"macro-F1 dropped by {f1_drop:.4f} > {limits.max_macro_f1_drop}")
    a32, a8 = s32["auroc_defect_vs_ok"], s8["auroc_defect_vs_ok"]
    if a32 is not None and a8 is not None and a32 - a8 > limits.max_auroc_drop:
        failures.append(f"AUROC dropped by {a32 - a8:.4f} > {limits.max_auroc_drop}")
    map_figures = anomaly = None
    defect = labels != ok_index
    if DEFECT_MAP in fp32 and DEFECT_MAP in int8:
        map_figures = _map_figures(fp32[DEFECT_MAP], int8[DEFECT_MAP], defect)
        if map_figures["mae"] > limits.max_map_mae:
            failures.append(
                f"defect map changed by {map_figures['mae']:.4f} on average > {limits.max_map_mae}"
            )
        m32, m8 = map_figures["map_auroc_fp32"], map_figures["map_auroc_int8"]
        if m32 is not None and m8 is not None and m32 - m8 > limits.max_map_auroc_drop:
            failures.append(
                f"defect map AUROC dropped by {m32 - m8:.4f} > {limits.max_map_auroc_drop}"
            )
    if ANOMALY in fp32 and ANOMALY in int8:
        anomaly = {
            "auroc_fp32": roc_auc(defect, fp32[ANOMALY]),
            "auroc_int8": roc_auc(defect, int8[ANOMALY]),
        }
        n32, n8 = anomaly["auroc_fp32"], anomaly["auroc_int8"]
        if n32 is not None and n8 is not None and n32 - n8 > limits.max_anomaly_auroc_drop:
            failures.append(
                f"anomaly AUROC dropped by {n32 - n8:.4f} > {limits.max_anomaly_auroc_drop}"
            )
    if failures:
        failures.append("worst classes: " + ", ".join(r["class"] for r in rows[:3]))
    boot = {
        name: with_intervals(p, labels, classes, ok_index, clusters)
        for name, p in (("fp32", p32), ("int8", p8))
    }
    return GateResult(
        n=len(labels),
        agreement=agreement,
        macro_f1_fp32=s32["macro_f1"],
        macro_f1_int8=s8["macro_f1"],
        auroc_fp32=a32,
        auroc_int8=a8,
        recall95_fp32=s32["recall_at_95_precision"],
        recall95_int8=s8["recall_at_95_precision"],
        per_class=rows,
        failures=failures,
        limits=limits,
        intervals={name: b["intervals"] for name, b in boot.items()},
        support=boot["fp32"]["support"],
        defect_map=map_figures,
        anomaly=anomaly,
    )


def _map_figures(fp32: np.ndarray, int8: np.ndarray, defect: np.ndarray) -> dict[str, Any]:
    """Mean |change| of the map's probabilities, and the AUROC of each map's maximum."""
    flat32, flat8 = fp32.reshape(len(fp32), -1), int8.reshape(len(int8), -1)
    return {
        "mae": float(np.abs(flat32 - flat8).mean()) if flat32.size else 0.0,
        "map_auroc_fp32": roc_auc(defect, flat32.max(axis=1)),
        "map_auroc_int8": roc_auc(defect, flat8.max(axis=1)),
    }
