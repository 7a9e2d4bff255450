"""Detection quality on parts no model saw: part-grouped k-fold cross-validation on real data.

For each recipe (the recommended one, and the baseline in the same run), each fold: train on
the other folds' parts, export the signed bundle as ``lineqc export`` does (INT8 calibrated
and gated, thresholds chosen on the fold's validation parts), then run the bundle's FP32 and
INT8 ONNX models and its decision policy on the fold's test parts, as a device would. The
test predictions of all folds are pooled: every part is judged once, by a model that never
saw it. Figures carry 95% bootstrap intervals resampling parts, and their support.

    .venv/bin/python bench/bench_quality.py [--dataset data/magnetic-tile] [--folds 3]
        [--recipe train/configs/default.yaml] [--baseline train/configs/baseline.yaml]
        [--out runs/bench-quality] [--reuse | --rejudge] [--json]

``--folds 1`` is a quick look: one part-grouped train/val/test split. ``--reuse`` keeps a
fold already computed with the same resolved config (recipe and ``--set`` overrides),
dataset, folds, seed and code commit; ``--rejudge`` keeps each fold's trained model (any
commit) and exports and judges it again.
Written to ``--out``: ``quality.json`` and ``quality.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lineqc.datasets.labels import label_indices, split_records
from lineqc.datasets.manifest import Record, load, manifest_hash
from lineqc.datasets.prepare import magnetic_tile_dataset
from lineqc.edge.bundle import Bundle, load_bundle
from lineqc.edge.decision import softmax
from lineqc.edge.signing import generate_keys
from lineqc.export.judge import decide_records
from lineqc.export.pipeline import ExportOptions, export_run
from lineqc.train import checkpoint
from lineqc.train.config import (
    SCORING_KEYS,
    TrainConfig,
    TrainConfigError,
    from_dict,
    load_config,
)
from lineqc.train.crossval import LEFT_OUT, FoldPredictions, fold_views, pooled
from lineqc.train.intervals import cluster_ids, fmt_ci, intervals, parts_of
from lineqc.train.loop import train
from lineqc.train.metrics import anomaly_figures
from lineqc.train.tracking import git_commit

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "int8")
HEADLINE = (
    ("auroc_defect_vs_ok", "defect-vs-OK AUROC"),
    ("recall_at_95_precision", "recall at 95% precision"),
    ("macro_f1", "macro-F1"),
    ("balanced_accuracy", "balanced accuracy"),
)


def code_version() -> str:
    """The commit the figures come from ("-dirty": with uncommitted changes)."""
    git = git_commit()
    return f"{git['commit']}{'-dirty' if git['dirty'] else ''}"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Fold:
    doc: dict[str, Any]  # what fold.json holds

    def predictions(self, precision: str, records: dict[str, Any]) -> FoldPredictions:
        d = self.doc
        return FoldPredictions(
            records=[records[i] for i in d["ids"]],
            labels=np.asarray(d["labels"], dtype=np.int64),
            probs=np.asarray(d["probs"][precision], dtype=np.float64),
            verdicts=list(d["verdicts"][precision]),
        )


def run_fold(
    cfg: TrainConfig,
    view: Path,
    out: Path,
    key: Path,
    cache_key: dict[str, Any],
    reuse: bool = False,
    rejudge: bool = False,
) -> Fold:
    """Train, export and judge one fold; its figures go to ``out/fold.json``. ``reuse``: a
    fold computed with the same cache key is kept. ``rejudge``: a model trained with the same
    config on the same data (any commit; ``SCORING_KEYS`` aside) is exported and judged
    again without training, finished again first where those keys differ."""
    done = out / "fold.json"
    previous = json.loads(done.read_text()) if done.exists() else {}
    if reuse and stored_key(previous) == cache_key:
        print(f"reusing {done}", file=sys.stderr)
        return Fold(previous)
    run_dir = out / "run"
    if rejudge and _same_training(previous, cache_key) and (run_dir / "best.pt").is_file():
        train_wall, train_cpu = previous["train_wall_s"], previous["train_cpu_s"]
        trained_at = previous.get("trained_at", previous["cache_key"]["commit"])
        print(f"rejudging the model trained at commit {trained_at}", file=sys.stderr)
        scored = checkpoint.load_meta(run_dir / "best.pt")["config"]
        if any(scored.get(k) != v for k, v in cfg.scoring.items()):
            train(cfg, view, run_dir, resume=True)  # the same weights, scored otherwise
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a fold cut short: train it again
        wall, cpu = time.perf_counter(), cpu_seconds()
        train(cfg, view, run_dir)
        train_wall, train_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        trained_at = cache_key["commit"]

    bundle_dir = out / "bundle"
    # An INT8 model that fails the gate stays in the bundle, marked as failed (devices refuse
    # it; FP32 becomes the default): it is still judged here, and the gate's verdict read.
    export_run(run_dir, view, bundle_dir, key, ExportOptions(latency_reps=50, overwrite=True))
    bundle = load_bundle(bundle_dir, key.with_suffix(".pub"))
    evaluation = bundle.manifest.evaluation
    gate = {
        "passed": bundle.manifest.models["int8"].gate_passed is True,
        "report": evaluation.gate.model_dump() if evaluation and evaluation.gate else None,
    }
    manifest = load(view)
    records = split_records(manifest, "test", view)
    labels = label_indices(records, bundle.classes, bundle.ok_class, manifest.ok_class)
    left_out = [r for r in manifest if LEFT_OUT in r.extra]
    probs, verdicts, anomaly, unknown = {}, {}, {}, {}
    for precision in PRECISIONS:
        judged = judge(bundle, precision, view, records)
        probs[precision] = judged["probs"]
        verdicts[precision] = judged["verdicts"]
        anomaly[precision] = judged["anomaly"]
        if left_out:
            unknown[precision] = judge(bundle, precision, view, left_out)
    doc = {
        "cache_key": cache_key,
        "ids": [r.id for r in records],
        "labels": labels.tolist(),
        "classes": bundle.classes,
        "ok_class": bundle.ok_class,
        "probs": probs,
        "verdicts": verdicts,
        "anomaly": anomaly,
        "left_out": {"ids": [r.id for r in left_out], "judged": unknown},
        "trained_at": trained_at,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "best_epoch": json.loads((run_dir / "metrics.json").read_text()).get("best_epoch"),
        "gate": gate,
        "default_precision": bundle.default_precision,
        "latency_ms": bundle.manifest.to_json().get("latency_ms"),
        "sizes": {s: len(manifest.in_split(s)) for s in ("train", "val", "test")},
    }
    done.write_text(json.dumps(doc) + "\n")
    return Fold(doc)


def fold_cache_key(cfg: TrainConfig, base_key: dict[str, Any]) -> dict[str, Any]:
    """What a fold's figures depend on: the data, folds and seed, the code commit, and the
    resolved training config (a recipe's comments or the way an override is spelt aside;
    tracking is not training)."""
    config = {k: v for k, v in cfg.to_json().items() if k != "tracking"}
    return {**base_key, "config": config}


def stored_key(previous: dict[str, Any]) -> dict[str, Any] | None:
    """A fold's stored cache key with its config read by today's ``TrainConfig``: a key
    added since reads as its default, which is how the fold trained (a new key's default
    keeps the old behaviour), so a new knob does not throw every cached fold away. None: no
    key, a key from before the config was the key (a recipe hash and override strings), or
    a config today's code cannot read (a key removed or renamed): trained again."""
    before = previous.get("cache_key") or {}
    if "config" not in before:
        return None
    try:
        cfg = from_dict(before["config"])
    except TrainConfigError:
        return None
    return fold_cache_key(cfg, {k: v for k, v in before.items() if k != "config"})


def _same_training(previous: dict[str, Any], cache_key: dict[str, Any]) -> bool:
    """Whether a fold's stored model came from the same config, data, folds and seed (any
    commit; how it is scored, ``SCORING_KEYS``, aside)."""
    before = stored_key(previous)

    def training(key: dict[str, Any]) -> dict[str, Any]:
        config = {k: v for k, v in key["config"].items() if k not in SCORING_KEYS}
        return {**key, "commit": None, "config": config}

    return before is not None and training(before) == training(cache_key)


def judge(bundle: Bundle, precision: str, view: Path, records: list[Record]) -> dict[str, Any]:
    """What the bundle's model of ``precision`` and that model's policy make of ``records``,
    as a device runs them (``lineqc.export.judge``), as JSON lists."""
    decided = decide_records(bundle, precision, view, records)
    return {
        "probs": softmax(decided.logits, bundle.policy_for(precision).temperature).tolist(),
        "verdicts": decided.verdicts,
        "reasons": [d.reason for d in decided.decisions],
        "anomaly": None if decided.anomaly is None else decided.anomaly.tolist(),
    }


def evaluate_recipe(
    name: str,
    recipe: Path,
    overrides: list[str],
    views: list[Path],
    out: Path,
    key: Path,
    base_key: dict[str, Any],
    reuse: bool = False,
    rejudge: bool = False,
) -> dict[str, Any]:
    cfg = load_config(recipe, [*overrides, "tracking.mlflow=false"])
    cache_key = fold_cache_key(cfg, base_key)
    folds = []
    for f, view in enumerate(views):
        print(f"== {name}: fold {f + 1}/{len(views)} ({recipe})", file=sys.stderr)
        fold_out = out / name / f"fold{f}"
        folds.append(run_fold(cfg, view, fold_out, key, cache_key, reuse, rejudge))
    records = {r.id: r for r in load(views[0])}
    classes, ok_class = folds[0].doc["classes"], folds[0].doc["ok_class"]
    ok_index = classes.index(ok_class)
    figures = {
        p: pooled([f.predictions(p, records) for f in folds], classes, ok_index) for p in PRECISIONS
    }
    for p in PRECISIONS:
        scores = [f.doc["anomaly"][p] for f in folds]
        if all(s is not None for s in scores):
            test = [records[i] for f in folds for i in f.doc["ids"]]
            labels = np.concatenate([f.doc["labels"] for f in folds])
            figures[p]["anomaly"] = anomaly_figures(
                np.concatenate(scores), labels, classes, ok_index, parts_of(test)
            )
        if folds[0].doc["left_out"]["ids"]:
            figures[p]["left_out"] = left_out_figures(folds, p, records)
    return {
        "recipe": str(recipe),
        "overrides": overrides,
        "figures": figures,
        "train_minutes_per_fold": [round(f.doc["train_wall_s"] / 60, 2) for f in folds],
        "train_cpu_minutes_per_fold": [round(f.doc["train_cpu_s"] / 60, 2) for f in folds],
        "best_epochs": [f.doc["best_epoch"] for f in folds],
        "gate_passed": [f.doc["gate"]["passed"] for f in folds],
        "default_precision": [f.doc["default_precision"] for f in folds],
        "latency_ms": [f.doc["latency_ms"] for f in folds],
        "split_sizes": [f.doc["sizes"] for f in folds],
        "classes": classes,
        "ok_class": ok_class,
    }


def left_out_figures(folds: list[Fold], precision: str, records: dict[str, Any]) -> dict[str, Any]:
    """The class no model knew: how many of its test images the policy kept off the OK
    path (uncertain or defect), and how many only the anomaly rule caught."""
    ids = [i for f in folds for i in f.doc["left_out"]["ids"]]
    verdicts = np.array(
        [v for f in folds for v in f.doc["left_out"]["judged"][precision]["verdicts"]]
    )
    reasons = np.array(
        [str(r) for f in folds for r in f.doc["left_out"]["judged"][precision]["reasons"]]
    )
    flagged = verdicts != "ok"
    by_anomaly = reasons == "anomalous"
    clusters = cluster_ids(parts_of([records[i] for i in ids]), len(ids))
    found = intervals(
        lambda rows: {"flagged": float(flagged[rows].mean()) if rows.size else None}, clusters
    )
    return {
        "class": records[ids[0]].extra[LEFT_OUT],
        "images": len(ids),
        "flagged": float(flagged.mean()),
        "flagged_interval": found["flagged"],
        "caught_by_anomaly_only": float(by_anomaly.mean()),
        "flagged_without_anomaly_rule": float((flagged & ~by_anomaly).mean()),
    }


def _cell(fig: dict[str, Any], key: str) -> str:
    return fmt_ci(fig.get(key), fig["intervals"].get(key))


def markdown(results: dict[str, dict[str, Any]], folds: int) -> str:
    names = list(results)
    first = results[names[0]]
    support = first["figures"]["fp32"]["support"]
    lines = [
        f"# Detection quality: {folds}-fold part-grouped cross-validation",
        "",
        f"Pooled test predictions of all folds: {support['images']} images of "
        f"{support['parts']} parts ({support['defect_images']} defect, {support['ok_images']} "
        "OK), each judged by a model that never saw its part. [95% bootstrap interval, "
        "resampling parts]",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for precision in PRECISIONS:
        for key, label in HEADLINE:
            row = [f"{label} ({precision.upper()})"]
            row += [_cell(results[n]["figures"][precision], key) for n in names]
            lines.append("| " + " | ".join(row) + " |")
    for key, label in (
        ("uncertain_share", "uncertain share at the export's thresholds"),
        ("ok_false_reject_rate", "OK false-reject rate at the thresholds"),
        ("defect_passed_as_ok_rate", "defects passed as OK at the thresholds"),
    ):
        for precision in PRECISIONS:
            row = [f"{label} ({precision.upper()})"]
            for n in names:
                v = results[n]["figures"][precision]["policy"][key]
                row.append("n/a" if v is None else f"{v:.3f}")
            lines.append("| " + " | ".join(row) + " |")
    for precision in PRECISIONS:
        row = [f"anomaly score AUROC, learnt from OK frames only ({precision.upper()})"]
        for n in names:
            a = results[n]["figures"][precision].get("anomaly")
            row.append(fmt_ci(a["auroc_defect_vs_ok"], a["interval"]) if a else "(none)")
        lines.append("| " + " | ".join(row) + " |")
    lines.append(
        "| training minutes per fold (wall) | "
        + " | ".join(
            ", ".join(f"{m:.1f}" for m in results[n]["train_minutes_per_fold"]) for n in names
        )
        + " |"
    )
    lines.append(
        "| training CPU minutes per fold | "
        + " | ".join(
            ", ".join(f"{m:.1f}" for m in results[n]["train_cpu_minutes_per_fold"]) for n in names
        )
        + " |"
    )
    lines.append(
        "| INT8 gate passed per fold | "
        + " | ".join(", ".join(str(g) for g in results[n]["gate_passed"]) for n in names)
        + " |"
    )
    for title, part in (("Recall per class (FP32)", "recall"), ("AUROC per class (FP32)", "auroc")):
        lines += ["", f"## {title}", "", "| class | support | " + " | ".join(names) + " |"]
        lines.append("|---|---|" + "---|" * len(names))
        for cls, c in first["figures"]["fp32"]["per_class"].items():
            row = [cls, str(c["support"])]
            for n in names:
                pc = results[n]["figures"]["fp32"]["per_class"][cls]
                row.append(fmt_ci(pc[part], pc["intervals"][part]))
            lines.append("| " + " | ".join(row) + " |")
    left = first["figures"]["fp32"].get("left_out")
    if left:
        lines += ["", f"## The class no model knew: {left['class']} ({left['images']} images)", ""]
        lines += ["| share of its images | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for key, label in (
            ("flagged", "kept off the OK path (uncertain or defect)"),
            ("flagged_without_anomaly_rule", "... by the class head and thresholds alone"),
            ("caught_by_anomaly_only", "... only by the anomaly rule"),
        ):
            row = [label]
            for n in names:
                lf = results[n]["figures"]["fp32"]["left_out"]
                row.append(
                    fmt_ci(lf[key], lf["flagged_interval"])
                    if key == "flagged"
                    else f"{lf[key]:.3f}"
                )
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Defect-vs-OK AUROC per session (FP32)", ""]
    lines += ["| session | images (parts) | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    for session, s in first["figures"]["fp32"]["per_session"].items():
        sup = s["support"]
        row = [session, f"{sup['images']} ({sup['parts']})"]
        for n in names:
            ps = results[n]["figures"]["fp32"]["per_session"][session]
            row.append(fmt_ci(ps["auroc_defect_vs_ok"], ps["intervals"]["auroc_defect_vs_ok"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "magnetic-tile")
    parser.add_argument(
        "--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic-tile"
    )
    parser.add_argument("--folds", type=int, default=3, help="k (default 3); 1: one split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--leave-out",
        metavar="CLASS",
        help="a defect class no model may learn: is it still kept off the OK path?",
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "train/configs/default.yaml")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=ROOT / "train/configs/baseline.yaml",
        help="the recipe to compare against in the same run ('none' to skip)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="KEY=VALUE override for the recipe (not the baseline)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--reuse", action="store_true", help="keep folds already computed")
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="keep each fold's trained model (same config, data, folds and seed, any commit) "
        "and export and judge it again with this code: for changes to the export or the "
        "decision policy",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    magnetic_tile_dataset(args.dataset, args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    key = args.out / "keys" / "signing.key"
    if not key.exists():
        generate_keys(key.with_suffix(""))
    views = fold_views(
        args.dataset, args.out / "views", args.folds, args.seed, leave_out=args.leave_out
    )
    base_key = {
        "dataset": manifest_hash(args.dataset),
        "folds": args.folds,
        "seed": args.seed,
        "leave_out": args.leave_out,
        "commit": code_version(),
    }
    recipes = {"recipe": (args.recipe, args.overrides)}
    if str(args.baseline) != "none":
        recipes["baseline"] = (args.baseline, [])
    results = {
        name: evaluate_recipe(
            name, path, overrides, views, args.out, key, base_key, args.reuse, args.rejudge
        )
        for name, (path, overrides) in recipes.items()
    }
    doc = {"folds": args.folds, "seed": args.seed, **base_key, "results": results}
    (args.out / "quality.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(results, args.folds)
    (args.out / "quality.md").write_text(table)
    print(json.dumps(doc, indent=2) if args.json else table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
