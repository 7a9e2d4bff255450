"""The evaluation report: plots (matplotlib PNG), ``report.html`` and ``model_card.md``."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a training box
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from lineqc.edge.decision import softmax
from lineqc.edge.preprocess import PreprocessSpec

from .calibration import reliability_bins
from .gallery import error_gallery
from .intervals import fmt_ci
from .metrics import INTERVAL_KEYS

if TYPE_CHECKING:
    from .evaluate import SplitResult

HEADLINE = (
    "macro_f1",
    "balanced_accuracy",
    "auroc_defect_vs_ok",
    "recall_at_95_precision",
    "accuracy",
    "ece_before",
    "ece_after",
    "temperature",
)
SLICE_COLUMNS = ("n", *INTERVAL_KEYS)


def fmt_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_confusion(cm: np.ndarray, classes: list[str]) -> bytes:
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(classes), 1 + 0.7 * len(classes)))
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.5 else "black",
            fontsize=9,
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (colour: row share)")
    return _png(fig)


def plot_reliability(logits: np.ndarray, labels: np.ndarray, temperature: float) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, t, title in ((axes[0], 1.0, "before"), (axes[1], temperature, "after")):
        conf, acc, count = reliability_bins(softmax(logits, t), labels)
        filled = count > 0
        edges = np.linspace(0, 1, len(count) + 1)
        ax.bar(
            edges[:-1][filled],
            acc[filled],
            width=1 / len(count),
            align="edge",
            edgecolor="k",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.scatter(conf[filled], acc[filled], s=10, c="k", zorder=3)
        ax.set_title(f"{title} temperature scaling (T={t:.2f})")
        ax.set_xlabel("confidence")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    return _png(fig)


def plot_curves(probs: np.ndarray, labels: np.ndarray, classes: list[str], ok: int) -> bytes:
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    defect = labels != ok
    score = 1 - probs[:, ok]
    if 0 < defect.sum() < len(defect):
        fpr, tpr, _ = roc_curve(defect, score)
        roc.plot(fpr, tpr, "k", lw=2, label="defect vs OK")
        precision, recall, _ = precision_recall_curve(defect, score)
        pr.plot(recall, precision, "k", lw=2, label="defect vs OK")
    for i, name in enumerate(classes):
        positive = labels == i
        if i != ok and 0 < positive.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positive, probs[:, i])
            roc.plot(fpr, tpr, lw=1, label=name)
    pr.axhline(0.95, color="r", ls="--", lw=1, label="95% precision")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, defect vs OK")
    roc.legend(fontsize=8)
    pr.legend(fontsize=8)
    return _png(fig)


def plot_history(history: list[dict[str, Any]]) -> bytes:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    a.plot(epochs, [h.get("val_loss") for h in history], label="val loss")
    a.set(xlabel="epoch", title="Loss")
    a.legend()
    for key in ("val_macro_f1", "val_balanced_accuracy", "val_auroc_defect_vs_ok"):
        b.plot(epochs, [h.get(key) for h in history], label=key[4:])
    b.set(xlabel="epoch", title="Validation")
    b.legend()
    return _png(fig)


def headline_rows(m: dict[str, Any]) -> list[list[str]]:
    """metric, value [95% interval]: the interval where the figure has one."""
    found = m.get("intervals", {})
    return [
        [k, fmt_ci(m.get(k), found.get(k)) if k in found else fmt_value(m.get(k))] for k in HEADLINE
    ]


def headline_text(m: dict[str, Any]) -> str:
    """The headline figures with their intervals and support, for a terminal."""
    lines = [f"  {support_text(m)}"]
    lines += [f"  {key:24s} {value}" for key, value in headline_rows(m)]
    if "anomaly" in m:
        a = m["anomaly"]
        lines.append(
            f"  {'anomaly score AUROC':24s} {fmt_ci(a['auroc_defect_vs_ok'], a['interval'])}"
            "  (learnt from OK frames only)"
        )
    return "\n".join(lines)


def anomaly_text(m: dict[str, Any]) -> str:
    """The anomaly score's figures in a sentence ('' for a model without one)."""
    a = m.get("anomaly")
    if not a:
        return ""
    per_class = ", ".join(f"{c} {fmt_value(v)}" for c, v in a["auroc_per_class"].items())
    return (
        "Anomaly score (learnt from OK frames only, for defects nobody labelled): defect-vs-OK "
        f"AUROC {fmt_ci(a['auroc_defect_vs_ok'], a['interval'])}; per defect class against OK: "
        f"{per_class}."
    )


def anomaly_html(m: dict[str, Any]) -> str:
    text = anomaly_text(m)
    return f"<p>{html.escape(text)}</p>" if text else ""


def support_text(m: dict[str, Any]) -> str:
    """What the figures rest on, in words."""
    s = m.get("support")
    if not s:
        return f"{m.get('n', '?')} images"
    boot = m.get("bootstrap", {})
    return (
        f"{s['images']} images of {s['parts']} parts ({s['defect_images']} defect, "
        f"{s['ok_images']} OK); intervals: {int(boot.get('level', 0.95) * 100)}% "
        f"{boot.get('method', 'bootstrap')}, {boot.get('reps', '?')} resamples"
    )


def _table(rows: list[list[str]], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<div class="wide"><table><tr>{cells}</tr>{body}</table></div>'


def _slice_rows(slices: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in slices.items():
        found = s.get("intervals", {})
        parts = s.get("support", {}).get("parts")
        row = [name, f"{s['n']}" + (f" ({parts} parts)" if parts is not None else "")]
        row += [fmt_ci(s.get(c), found.get(c)) for c in SLICE_COLUMNS[1:]]
        rows.append(row)
    return rows


CLASS_HEAD = ["class", "support", "precision", "recall [95%]", "f1", "auroc [95%]", "recall@95%P"]


def _class_rows(per_class: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in per_class.items():
        found = s.get("intervals", {})
        rows.append(
            [
                name,
                fmt_value(s["support"]),
                fmt_value(s["precision"]),
                fmt_ci(s["recall"], found.get("recall")),
                fmt_value(s["f1"]),
                fmt_ci(s["auroc"], found.get("auroc")),
                fmt_value(s["recall_at_95_precision"]),
            ]
        )
    return rows


def write_all(
    out: Path,
    result: SplitResult,
    history: list[dict[str, Any]],
    run_info: dict[str, Any],
    meta: dict[str, Any],
) -> list[Path]:
    """Write plots/*.png, report.html and model_card.md into ``out``; return their paths."""
    m = result.metrics
    classes, ok = m["classes"], m["classes"].index(m["ok_class"])
    known = result.labels >= 0
    probs = softmax(result.logits, m["temperature"])
    plots = {
        "confusion": plot_confusion(np.array(m["confusion_matrix"]), classes),
        "reliability": plot_reliability(
            result.logits[known], result.labels[known], m["temperature"]
        ),
        "curves": plot_curves(probs[known], result.labels[known], classes, ok),
    }
    if history:
        plots["history"] = plot_history(history)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in plots.items():
        (plot_dir / f"{name}.png").write_bytes(data)
        written.append(plot_dir / f"{name}.png")

    headline = headline_rows(m)
    slice_head = ["slice", *SLICE_COLUMNS]
    class_head = CLASS_HEAD
    sections = [
        f"<h1>lineqc evaluation: {html.escape(meta['model'])} on "
        f"{html.escape(m['split'])} ({m['n']} images)</h1>",
        f"<p>run {html.escape(str(run_info.get('run_id')))}, dataset "
        f"{html.escape(m.get('dataset', ''))}, manifest "
        f"{html.escape(str(meta.get('dataset_manifest_hash', ''))[:16])}</p>",
        "<h2>Headline</h2>",
        f"<p>{html.escape(support_text(m))}</p>",
        _table(headline, ["metric", "value [95% interval]"]),
        anomaly_html(m),
        "<h2>By class</h2>",
        _table(_class_rows(m["slices"]["class"]), class_head),
    ]
    for kind, slices in m["slices"].items():
        if kind != "class":
            sections += [
                f"<h2>By {html.escape(kind)}</h2>",
                _table(_slice_rows(slices), slice_head),
            ]
    for name, data in plots.items():
        b64 = base64.b64encode(data).decode()
        sections.append(f'<h2>{name}</h2><img alt="{name}" src="data:image/png;base64,{b64}">')
    if m.get("dataset"):
        sections.append(
            error_gallery(
                result.records,
                result.labels,
                probs,
                result.defect_maps,
                classes,
                ok,
                Path(m["dataset"]),
                PreprocessSpec.from_json(meta["preprocess"]),
            )
        )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "img{max-width:100%}"
        ".wide{overflow-x:auto}"
        ".gallery{display:flex;flex-wrap:wrap;gap:8px}"
        ".gallery figure{margin:0;width:160px;font-size:11px;color:#333}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lineqc report</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    (out / "report.html").write_text(page)
    (out / "model_card.md").write_text(model_card(m, run_info, meta))
    return [*written, out / "report.html", out / "model_card.md"]


def md_table(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


# Why the recommended recipe's loss: measured by bench/bench_quality.py (bench/README.md).
LOSS_CHOICE = (
    "Focal loss (gamma 2) was measured against cross-entropy with label smoothing 0.1 in "
    "`bench/bench_quality.py` (2026-12-05; one part-grouped split of the magnetic-tile "
    "images, 229 images of 45 tiles, the recommended recipe otherwise): cross-entropy "
    "reached recall at 95% precision 0.855 against 0.638, defect-vs-OK AUROC 0.964 against "
    "0.955 and macro-F1 0.764 against 0.710. The intervals overlap, so the evidence is weak, "
    "but every headline figure favoured cross-entropy, and the recommended recipe uses it."
)


def loss_text(cfg: dict[str, Any]) -> str:
    """The loss a run trained with, in words."""
    loss = cfg.get("loss") or {}
    if loss.get("name") == "focal":
        return f"focal loss (gamma {loss.get('gamma', 2.0):g})"
    smoothing = loss.get("label_smoothing") or 0
    return "cross-entropy" + (f" with label smoothing {smoothing:g}" if smoothing else "")


def scoring_text(meta: dict[str, Any]) -> str:
    """How the model scores a frame (``SCORING_KEYS``), for the model card."""
    views = int(meta.get("flip_views", 1))
    text = (
        "each frame once"
        if views == 1
        else f"each frame and its mirror images, {views} views in one batch, outputs averaged "
        "(`flip_views`)"
    )
    if meta.get("defect_score", "head") == "map":
        text += "; p(defect) from the defect map's maximum cell (`defect_score: map`)"
    return text + ". Inside the ONNX model: the device needs nothing else."


def model_card(m: dict[str, Any], run_info: dict[str, Any], meta: dict[str, Any]) -> str:
    spec = meta["preprocess"]
    cfg = meta.get("config", {})
    git = run_info.get("git", {})
    counts = run_info.get("train_counts", {})
    sizes = run_info.get("split_sizes", {})
    origin = f"from {cfg['pretrained']}" if cfg.get("pretrained") else "from scratch"
    dirty = " (dirty tree)" if git.get("dirty") else ""
    lineage = meta.get("dataset_manifest_hash")
    small = [name for name, s in m["slices"]["class"].items() if s["support"] < 20]
    return f"""# Model card: {meta["model"]} defect classifier

## Model
- Architecture: timm `{meta["model"]}`, {spec["channels"]} input channel(s),
  {spec["height"]}x{spec["width"]} px, trained {origin}.
- Classes: {", ".join(m["classes"])}; the OK class is `{m["ok_class"]}`.
- Preprocessing: `lineqc.edge.preprocess` with {spec} (the device runs the same function).
- Scoring: {scoring_text(meta)}
- Loss: {loss_text(cfg)}. {LOSS_CHOICE}
- Calibration: temperature {m["temperature"]:.3f}, fitted on the validation split.
- Run: `{run_info.get("run_id")}`, git commit `{git.get("commit")}`{dirty},
  seed {run_info.get("seed")}, best epoch {m.get("best_epoch", "n/a")}.

## Data lineage
- Dataset: `{run_info.get("dataset", m.get("dataset"))}`, manifest hash `{lineage}`.
- Split sizes: {sizes}; train images per class: {counts}.
- Evaluated on split `{m["split"]}` of `{m.get("dataset")}` ({m["n"]} images).

## Intended use
Classifying single frames of one product's surface on the inspection line into OK or a known
defect class, with calibrated probabilities that feed the edge decision policy (OK / defect /
uncertain). Uncertain frames go to human review. It is not meant for other products,
cameras or lighting than those in its training data without re-evaluation, and not as the
only safeguard where a missed defect is safety-critical.

## Metrics ({m["split"]} split)
On {support_text(m)}.

{md_table(headline_rows(m), ["metric", "value [95% interval]"])}

{anomaly_text(m)}

Recall at 95% precision means: the share of defective frames caught while at most 5% of
rejected frames are actually OK.

## By class
{md_table(_class_rows(m["slices"]["class"]), CLASS_HEAD)}

## By capture session
{md_table(_slice_rows(m["slices"].get("session", {})), ["session", *SLICE_COLUMNS])}

## Limits
- Metrics come from {m["n"]} images; classes with few examples ({", ".join(small) or "none"})
  have wide uncertainty: treat their per-class figures as indicative only.
- Sessions, cameras or lighting absent from training may behave worse than the slices shown.
- {m.get("n_unknown_label", 0)} evaluated images had labels the model does not know; the model
  can only answer with its own classes and counts them as defects at best.
- Calibration was fitted on the validation split; re-check ECE after any change of camera.
"""
