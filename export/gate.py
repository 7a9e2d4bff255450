"""The accuracy gate: the INT8 model against FP32 on the validation split.

Checks top-1 agreement, the change in macro-F1 and in defect-vs-OK AUROC; reports recall at
95% precision too. The metric functions are training's (``lineqc.train.metrics``), so that
export and evaluation measure the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lineqc.edge.decision import softmax
from lineqc.train.metrics import per_class, summary


@dataclass(frozen=True)
class GateLimits:
    min_agreement: float = 0.99
    max_macro_f1_drop: float = 0.01  # one point
    max_auroc_drop: float = 0.005


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
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        def delta(a: float | None, b: float | None) -> str:
            return "" if a is None or b is None else f"{b - a:+.4f}"

        lim = self.limits
        rows = [
            ("top-1 agreement", "", fmt(self.agreement), "", f">= {lim.min_agreement:.4f}"),
            (
                "macro-F1",
                fmt(self.macro_f1_fp32),
                fmt(self.macro_f1_int8),
                delta(self.macro_f1_fp32, self.macro_f1_int8),
                f"drop <= {lim.max_macro_f1_drop:.4f}",
            ),
            (
                "AUROC defect vs OK",
                fmt(self.auroc_fp32),
                fmt(self.auroc_int8),
                delta(self.auroc_fp32, self.auroc_int8),
                f"drop <= {lim.max_auroc_drop:.4f}",
            ),
            (
                "recall @ 95% precision",
                fmt(self.recall95_fp32),
                fmt(self.recall95_int8),
                delta(self.recall95_fp32, self.recall95_int8),
                "(reported)",
            ),
        ]
        lines = [f"INT8 accuracy gate on {self.n} validation images"]
        lines.append(f"  {'metric':24s} {'FP32':>8s} {'INT8':>8s} {'change':>8s}  limit")
        lines += [f"  {r[0]:24s} {r[1]:>8s} {r[2]:>8s} {r[3]:>8s}  {r[4]}" for r in rows]
        lines.append("  worst classes (F1 FP32 -> INT8, agreement):")
        for c in self.per_class[:3]:
            lines.append(
                f"    {c['class']:20s} {c['f1_fp32']:.4f} -> {c['f1_int8']:.4f}"
                f"  agreement {fmt(c['agreement'])}  (n={c['support']})"
            )
        if self.kept_fp32:
            lines.append(f"  layers kept in FP32: {', '.join(self.kept_fp32)}")
        if self.latency_ms:
            for precision, lat in self.latency_ms.items():
                lines.append(
                    f"  latency {precision:5s} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms"
                )
        lines.append("  PASSED" if self.passed else "  FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)


def run_gate(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    ok_index: int,
    temperature: float,
    limits: GateLimits = GateLimits(),
) -> GateResult:
    p32, p8 = softmax(fp32_logits, temperature), softmax(int8_logits, temperature)
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
    if failures:
        failures.append("worst classes: " + ", ".join(r["class"] for r in rows[:3]))
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
    )
