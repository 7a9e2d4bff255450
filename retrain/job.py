"""The monthly retrain: reviewed labels in, a challenger trained, compared, maybe exported.

Steps: export the review store's final labels into the dataset (``export_labels``; only
with a database) -> train a challenger with the champion's config into ``OUT/challenger``
-> evaluate champion and challenger on each slice as the line runs them, when the champion
is named by its deployed bundle and a ``--key`` is given: the challenger is exported first
(``lineqc export``, INT8 gate included) into a candidate bundle, and both bundles' default
models (INT8 when it passed the gate) with their own decision policies are judged
(``lineqc.export.judge``), which adds the policy's figures (OK frames rejected, defects
passed as OK, frames sent to review). Otherwise both as FP32 checkpoints through the
device's preprocessing (argmax), and ``comparison.json`` says why (``compared_as``):

- ``test``: the frozen test split (the long-run yardstick).
- ``recent_reviewed``: rows labelled by inspectors, captured within the last N days, that
  the challenger did not train on (split val, or no split: reviewed frames never enter test
  and near duplicates of test images stay in no split). Val rows did steer the
  challenger's choice of epoch and its temperature, a slight advantage that is accepted:
  reviewed frames placed in train cannot be judged at all.

- ``recent_audit``: those of them the device sampled at random among its confident decisions,
  a slice not chosen because the champion was unsure of it.

-> compare (``checks.py``): overall macro-F1, recall of each class present, and macro-F1 of
each capture session and source (device/camera) slice, each as the paired difference with
its interval over parts and its support. The challenger is promoted only on evidence:
credibly worse on no check of any evaluated slice and credibly better on at least one ->
the candidate becomes ``OUT/bundle`` (a challenger compared as a checkpoint is exported
now) when promoted or forced and a key is given; an unpromoted candidate is deleted ->
``OUT/comparison.json`` and ``OUT/comparison.md`` say what was decided and why, with both
models' figures side by side (95% intervals over parts) on the same images.

Two things are never done: training a challenger with the champion's recipe when the
dataset holds no new training rows since the champion (``lineage.py``; ``force`` or a
``--set`` override trains anyway), and promoting or
signing a challenger whose predictions equal the champion's on every evaluated image (it
is the champion again, whatever ``force`` says).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineqc.atomic import atomic_write_text
from lineqc.datasets import manifest as mf
from lineqc.datasets.lineage import Since, since
from lineqc.errors import LineqcError
from lineqc.train.config import TrainConfig, apply_override, from_dict

from .checks import MIN_SUPPORT, Check, GateDecision, compare, decide

if TYPE_CHECKING:
    from lineqc.edge.bundle import Bundle

SLICES = ("test", "recent_reviewed")
IDENTICAL_TOLERANCE = 1e-5  # logits this close on every image: the same model retrained


class RetrainError(LineqcError):
    """A retrain that cannot start or go on; the message names the input and the reason."""


def log(message: str) -> None:
    print(f"retrain: {message}", file=sys.stderr, flush=True)


# ---- the champion -------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    given: Path  # what the user named: a run folder, a checkpoint or a bundle
    run: Path  # the checkpoint that is evaluated and whose config the challenger reuses
    config: TrainConfig
    run_id: str | None
    bundle: Path | None  # when a bundle was named
    manifest_hash: str | None = None  # of the dataset it trained on


def _run_id(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / "run.json").read_text()).get("run_id"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _from_checkpoint(given: Path, path: Path, bundle: Path | None = None) -> Champion:
    from lineqc.train import checkpoint  # torch: only once the arguments are known to be good

    ckpt = checkpoint.resolve(path)
    meta = checkpoint.load_meta(ckpt)
    if "config" not in meta:
        raise RetrainError(f"{ckpt.with_suffix('.json')}: records no training config")
    config = from_dict(meta["config"], f"{ckpt.with_suffix('.json')}: config")
    run_id = meta.get("run_id") or _run_id(ckpt.parent)
    return Champion(given, ckpt, config, run_id, bundle, meta.get("dataset_manifest_hash"))


def find_run(run_id: str, roots: Sequence[Path]) -> Path | None:
    """The run folder (``run.json`` and ``best.pt``) with this run id, at most two levels
    below one of ``roots``."""
    for root in roots:
        for info in sorted(
            [root / "run.json", *root.glob("*/run.json"), *root.glob("*/*/run.json")]
        ):
            if (info.parent / "best.pt").is_file() and _run_id(info.parent) == run_id:
                return info.parent
    return None


def resolve_champion(path: Path, runs: Sequence[Path] = ()) -> Champion:
    """A training run folder or checkpoint, or a bundle whose source run can be found.

    A bundle holds the model but not its training config; it records the run id, which is
    looked up under ``runs`` (default: the folder holding the bundle, so a run beside it).
    """
    from lineqc.export.bundle_writer import read_manifest_unverified

    path = Path(path)
    if path.suffix == ".pt" or (path / "best.pt").is_file():
        return _from_checkpoint(path, path)
    if not (path.is_file() or (path / "manifest.json").is_file()):
        raise RetrainError(
            f"--champion {path}: neither a training run folder (best.pt) nor a bundle "
            "(manifest.json, or a .tar)"
        )
    doc = read_manifest_unverified(path)
    model = doc.get("model")
    if not isinstance(model, dict) or "files" not in doc:
        raise RetrainError(f"--champion {path}: manifest.json is not a model bundle's")
    run_id = model.get("run_id")
    if not run_id:
        raise RetrainError(
            f"--champion {path}: the bundle records no training run, so its config is unknown; "
            "name the champion's run folder instead"
        )
    roots = list(runs) or [path.resolve().parent]
    run_dir = find_run(str(run_id), roots)
    if run_dir is None:
        raise RetrainError(
            f"--champion {path}: the bundle was exported from run {run_id}, whose config is not "
            f"in the bundle, and no run folder with that id was found under "
            f"{', '.join(map(str, roots))}; pass --runs DIR (a folder holding that run) or name "
            "the run folder as --champion"
        )
    return _from_checkpoint(path, run_dir, bundle=path)


def challenger_config(champion: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """The champion's config with ``--set key=value`` overrides, validated as in training."""
    doc = champion.to_json()
    for assignment in overrides:
        apply_override(doc, assignment)
    return from_dict(doc, "champion config with --set overrides")


# ---- slices -------------------------------------------------------------------------------


def _captured(record: mf.Record) -> datetime | None:
    if not record.captured_at:
        return None
    try:
        when = datetime.fromisoformat(record.captured_at)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def recent_reviewed(since: datetime) -> Callable[[mf.Record], bool]:
    """Inspector-labelled rows captured at or after ``since`` that no training run trains on."""

    def accept(record: mf.Record) -> bool:
        when = _captured(record)
        return (
            record.label_source.startswith("inspector:")
            and record.split != "train"
            and when is not None
            and when >= since
        )

    return accept


def recent_audit(since: datetime) -> Callable[[mf.Record], bool]:
    """The recent reviewed rows the device sampled at random among its confident decisions
    (``why: audit``): a slice not chosen because the champion was unsure of it."""
    reviewed = recent_reviewed(since)
    return lambda record: reviewed(record) and record.extra.get("why") == "audit"


def slice_selectors(since: datetime) -> dict[str, tuple[str, Callable[[mf.Record], bool] | None]]:
    """slice name -> (split, row filter) for ``evaluate_run``."""
    return {
        "test": ("test", None),
        "recent_reviewed": ("all", recent_reviewed(since)),
        "recent_audit": ("all", recent_audit(since)),
    }


def slice_size(manifest: mf.Manifest, split: str, where: Callable[[mf.Record], bool] | None) -> int:
    return sum(
        r.label is not None and (split == "all" or r.split == split) and (where is None or where(r))
        for r in manifest
    )


# ---- the job ------------------------------------------------------------------------------


@dataclass
class RetrainOptions:
    db: str | None = None  # review store: export its labels first; None skips that step
    images: str | None = None
    force: bool = False
    key: Path | None = None  # sign the new bundle; None: no bundle
    gate: bool = True  # False: INT8 written ungated, FP32 the default (`lineqc export --no-gate`)
    overrides: list[str] = field(default_factory=list)
    recent_days: float = 30.0
    tolerance: float = 0.0  # a check is worse when its whole interval is below -tolerance
    min_support: int = MIN_SUPPORT  # images a check must rest on to be judged
    runs: list[Path] = field(default_factory=list)  # where a bundle's source run is looked up
    device: str = "cpu"  # evaluation device
    batch_size: int = 64
    now: datetime | None = None  # "recent" is relative to this (default: the current time)


@dataclass
class RetrainResult:
    comparison: dict[str, Any]
    decision: GateDecision
    bundle: Path | None
    exit_code: int


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise RetrainError(f"--out {out}: not empty; each retrain gets a fresh folder")


Evaluate = Callable[[str, list[mf.Record]], Any]  # (who, records) -> an evaluation


def _evaluate(dataset: Path, since_: datetime, evaluate: Evaluate) -> dict[str, dict[str, Any]]:
    """slice -> {"n", "champion": result, "challenger": result} (or "skipped": why), both
    models evaluated by ``evaluate`` on the same labelled rows of each slice."""
    from lineqc.datasets.labels import split_records

    manifest = mf.load(dataset)
    out: dict[str, dict[str, Any]] = {}
    for name, (split, where) in slice_selectors(since_).items():
        n = slice_size(manifest, split, where)
        if n == 0:
            out[name] = {"n": 0, "skipped": "no labelled images in this slice"}
            log(f"{name}: no images, not evaluated")
            continue
        records = [r for r in split_records(manifest, split, dataset) if where is None or where(r)]
        out[name] = {"n": n}
        for who in ("champion", "challenger"):
            log(f"evaluating the {who} on {name} ({n} images)")
            out[name][who] = evaluate(who, records)
    return out


def _as_checkpoints(runs: dict[str, Path], dataset: Path, options: RetrainOptions) -> Evaluate:
    """Each model as its FP32 checkpoint through the device's preprocessing (argmax)."""
    from lineqc.train.evaluate import evaluate_run

    def evaluate(who: str, records: list[mf.Record]) -> Any:
        ids = {r.id for r in records}
        return evaluate_run(
            runs[who], dataset, "all", options.batch_size, options.device, lambda r: r.id in ids
        )

    return evaluate


def _as_deployed(bundles: dict[str, Bundle], dataset: Path) -> Evaluate:
    """Each model as its devices run it: the bundle's default precision (INT8 when it passed
    the gate) with the decision policy chosen for that model."""
    from lineqc.export.judge import judge

    dataset_ok = mf.load(dataset).ok_class

    def evaluate(who: str, records: list[mf.Record]) -> Any:
        return judge(bundles[who], dataset, records, dataset_ok)

    return evaluate


def _identical(results: dict[str, dict[str, Any]]) -> bool:
    """Both models gave the same logits, up to float rounding, on every evaluated image."""
    pairs = [(s["champion"], s["challenger"]) for s in results.values() if "skipped" not in s]
    return bool(pairs) and all(
        a.logits.shape == b.logits.shape
        and np.allclose(a.logits, b.logits, rtol=IDENTICAL_TOLERANCE, atol=IDENTICAL_TOLERANCE)
        for a, b in pairs
    )


def _slices_json(
    results: dict[str, dict[str, Any]], checks: list[Check]
) -> dict[str, dict[str, Any]]:
    """The evaluations as comparison.json keeps them: metrics, and the paired difference of
    macro-F1 (challenger minus champion, both models on each resample of parts)."""
    out: dict[str, dict[str, Any]] = {}
    for name, s in results.items():
        if "skipped" in s:
            out[name] = s
            continue
        overall = next((c for c in checks if c.slice == name and c.what == "macro-F1"), None)
        out[name] = {
            "n": s["n"],
            "champion": s["champion"].metrics,
            "challenger": s["challenger"].metrics,
            "macro_f1_difference": overall
            and {
                "macro_f1": overall.delta,
                "interval": overall.interval,
                "images": overall.support,
                "parts": overall.parts,
            },
        }
    return out


def _export_reviewed(dataset: Path, options: RetrainOptions) -> dict[str, Any] | None:
    """Export the review store's final labels into the dataset (with ``--db``)."""
    if options.db is None:
        log("no --db: reviewed labels not exported; training on the dataset as it is")
        return None
    from lineqc.review.export_labels import export_labels
    from lineqc.review.store import Store

    log(f"exporting reviewed labels from {options.db} into {dataset}")
    store = Store(options.db, options.images)
    try:
        summary = export_labels(store, dataset, quiet=False)
    finally:
        store.close()
    print(summary.text(), file=sys.stderr)
    return summary.to_json()


def _why_not_deployed(champion: Champion, options: RetrainOptions) -> str | None:
    """Why the two models are compared as FP32 checkpoints rather than as deployed (None:
    as deployed, the champion's bundle against the challenger's candidate bundle)."""
    if champion.bundle is None:
        return "the champion was named by its run, not by its deployed bundle"
    if options.key is None:
        return "no --key: no candidate bundle of the challenger can be made"
    return None


def _export_candidate(
    challenger_dir: Path, dataset: Path, out: Path, options: RetrainOptions
) -> tuple[Path | None, str | None]:
    """The challenger exported as ``lineqc export`` does (INT8 gate included) into
    ``out/candidate``: (its folder, None), or (None, why the gate refused it)."""
    from lineqc.export.errors import GateFailed
    from lineqc.export.pipeline import ExportOptions, export_run

    assert options.key is not None
    log(f"exporting the challenger's candidate bundle to {out / 'candidate'}")
    try:
        export_run(
            challenger_dir,
            dataset,
            out / "candidate",
            options.key,
            ExportOptions(gate=options.gate),
        )
    except GateFailed as failed:
        return None, f"the INT8 gate failed, no bundle written:\n{failed.result.table()}"
    return out / "candidate", None


def _bundle_entry(bundle: Path) -> dict[str, Any]:
    from lineqc.export.bundle_writer import read_manifest_unverified

    doc = read_manifest_unverified(bundle)
    gate = (doc.get("evaluation") or {}).get("gate")
    return {
        "exported": True,
        "path": str(bundle),
        "model_version": doc["model"]["version"],
        "default_precision": doc["default_precision"],
        "gate": gate,
    }


def _keep_candidate(
    candidate: Path | None, refused: str | None, out: Path, decision: GateDecision
) -> tuple[dict[str, Any], Path | None, int]:
    """(the comparison's "bundle" entry, the bundle, exit code): a promoted or forced
    candidate becomes ``out/bundle``; any other is deleted, so nothing unpromoted stays signed."""
    if candidate is None:
        return {"exported": False, "path": None, "reason": refused}, None, 1
    if not decision.export:
        shutil.rmtree(candidate)
        reason = {
            "identical": "the challenger is the champion again: its candidate bundle was deleted",
        }.get(decision.kind, "the challenger was not promoted: its candidate bundle was deleted")
        return {"exported": False, "path": None, "reason": reason}, None, 0
    candidate.replace(out / "bundle")
    return _bundle_entry(out / "bundle"), out / "bundle", 0


def _export_bundle(
    challenger_dir: Path, dataset: Path, out: Path, decision: GateDecision, options: RetrainOptions
) -> tuple[dict[str, Any], Path | None, int]:
    """(the comparison's "bundle" entry, the bundle, exit code) when the models were
    compared as checkpoints: the challenger is exported only once promoted or forced."""
    if not decision.export:
        reason = {
            "identical": "the challenger is the champion again: nothing to sign",
            "not-retrained": "no challenger was trained",
        }.get(decision.kind, "the challenger was not promoted (--force exports it anyway)")
        return {"exported": False, "path": None, "reason": reason}, None, 0
    if options.key is None:
        reason = "no --key given: nothing signed, no bundle written"
        return {"exported": False, "path": None, "reason": reason}, None, 0
    candidate, refused = _export_candidate(challenger_dir, dataset, out, options)
    return _keep_candidate(candidate, refused, out, decision)


def retrain(
    dataset: Path, champion_path: Path, out: Path, options: RetrainOptions
) -> RetrainResult:
    """The whole job; see the module docstring. Writes ``out``; returns the decision."""
    dataset, out = Path(dataset), Path(out)
    _check_out(out)
    champion = resolve_champion(champion_path, options.runs)
    cfg = challenger_config(champion.config, options.overrides)
    pubkey = None
    if options.key is not None:
        from lineqc.edge.signing import load_private_key

        pubkey = load_private_key(options.key).public_key()  # a bad key fails now
    out.mkdir(parents=True, exist_ok=True)
    now = options.now or datetime.now(timezone.utc)
    recent_since = now - timedelta(days=options.recent_days)
    labels = _export_reviewed(dataset, options)
    change = since(mf.load(dataset), champion.manifest_hash)
    log(change.sentence())
    challenger_dir = out / "challenger"
    doc = _head(dataset, champion, challenger_dir, options, labels, change, now, recent_since)

    if change.known and not change.training and not options.overrides and not options.force:
        reasons = [
            f"{change.sentence()}: with the same rows and the same recipe there is nothing new "
            "to learn from, so no challenger was trained (--force trains one anyway)"
        ]
        decision = GateDecision(False, False, reasons, "not-retrained")
        exported = _export_bundle(challenger_dir, dataset, out, decision, options)
        return _finish(out, doc, decision, [], {}, exported)

    from lineqc.train.loop import train

    log(f"training the challenger ({cfg.model}, {cfg.epochs} epochs) into {challenger_dir}")
    train(cfg, dataset, challenger_dir)
    doc["challenger"]["run_id"] = _run_id(challenger_dir)
    why_not = _why_not_deployed(champion, options)
    candidate: Path | None = None
    if why_not is None:
        from lineqc.edge.bundle import load_bundle

        assert champion.bundle is not None and pubkey is not None
        candidate, refused = _export_candidate(challenger_dir, dataset, out, options)
        if candidate is None:
            decision = GateDecision(False, options.force, [str(refused)], "gate-failed")
            return _finish(
                out, doc, decision, [], {}, _keep_candidate(None, refused, out, decision)
            )
        bundles = {
            "champion": load_bundle(champion.bundle, pubkey),
            "challenger": load_bundle(candidate, pubkey),
        }
        doc["compared_as"] = "deployed: " + "; ".join(
            f"{who} {b.version} ({b.default_precision}, its decision policy)"
            for who, b in bundles.items()
        )
        evaluate = _as_deployed(bundles, dataset)
    else:
        doc["compared_as"] = f"FP32 checkpoints, argmax ({why_not})"
        runs = {"champion": champion.run, "challenger": challenger_dir}
        evaluate = _as_checkpoints(runs, dataset, options)
    log(f"comparing as {doc['compared_as']}")
    results = _evaluate(dataset, recent_since, evaluate)
    checks: list[Check] = []
    not_compared: list[str] = []
    for name, r in results.items():
        if "skipped" not in r:
            c, skipped = compare(
                name, r["champion"], r["challenger"], options.tolerance, options.min_support
            )
            checks += c
            not_compared += skipped
    slices = _slices_json(results, checks)
    evaluated = [f"{name} (n={s['n']})" for name, s in slices.items() if "skipped" not in s]
    decision = decide(checks, evaluated, options.force, _identical(results), options.min_support)
    doc["not_compared"] = not_compared
    if candidate is not None:
        exported = _keep_candidate(candidate, None, out, decision)
    else:
        exported = _export_bundle(challenger_dir, dataset, out, decision, options)
    return _finish(out, doc, decision, checks, slices, exported)


def _head(
    dataset: Path,
    champion: Champion,
    challenger_dir: Path,
    options: RetrainOptions,
    labels: dict[str, Any] | None,
    change: Since,
    now: datetime,
    recent_since: datetime,
) -> dict[str, Any]:
    """comparison.json before any model is compared: what went in."""
    return {
        "created_at": now.isoformat(timespec="seconds"),
        "dataset": str(dataset),
        "dataset_manifest_hash": mf.manifest_hash(dataset),
        "champion": {
            "given": str(champion.given),
            "checkpoint": str(champion.run),
            "run_id": champion.run_id,
            "bundle": str(champion.bundle) if champion.bundle else None,
            "dataset_manifest_hash": champion.manifest_hash,
        },
        "challenger": {
            "run": str(challenger_dir),
            "run_id": None,
            "overrides": list(options.overrides),
        },
        "export_labels": labels,
        "since_champion": change.to_json(),
        "recent_days": options.recent_days,
        "recent_since": recent_since.isoformat(timespec="seconds"),
        "tolerance": options.tolerance,
        "min_support": options.min_support,
        "compared_as": None,
        "not_compared": [],
    }


def _finish(
    out: Path,
    doc: dict[str, Any],
    decision: GateDecision,
    checks: list[Check],
    slices: dict[str, dict[str, Any]],
    exported: tuple[dict[str, Any], Path | None, int],
) -> RetrainResult:
    """Write comparison.json and comparison.md; the result."""
    bundle, bundle_path, exit_code = exported
    doc.update(
        slices=slices,
        checks=[{**asdict(c), "delta": c.delta, "ok": c.ok} for c in checks],
        decision={
            "promoted": decision.promoted,
            "forced": decision.forced,
            "kind": decision.kind,
            "verdict": decision.verdict,
            "reasons": decision.reasons,
        },
        bundle=bundle,
    )
    atomic_write_text(out / "comparison.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", comparison_markdown(doc, checks))
    return RetrainResult(doc, decision, bundle_path, exit_code)


# ---- the report ---------------------------------------------------------------------------


def side_by_side(s: dict[str, Any]) -> list[list[str]]:
    """metric, champion, challenger: the headline figures of one evaluated slice, each with
    its 95% interval over parts where it has one."""
    from lineqc.train.intervals import fmt_ci
    from lineqc.train.report import HEADLINE

    models = (s["champion"], s["challenger"])
    return [
        [k, *(fmt_ci(m.get(k), m.get("intervals", {}).get(k)) for m in models)] for k in HEADLINE
    ]


def difference_text(s: dict[str, Any]) -> str:
    """The paired macro-F1 difference of one slice in words ('' when not measurable)."""
    from lineqc.train.intervals import fmt_ci

    d = s.get("macro_f1_difference")
    if not d:
        return ""
    interval = d["interval"]
    noise = interval is not None and interval[0] <= 0 <= interval[1]
    return (
        f"macro-F1, challenger minus champion: {fmt_ci(d['macro_f1'], interval)} on the same "
        f"{d['images']} images of {d['parts']} parts (both models on each resample of parts)"
        + ("; the interval holds 0: a difference this size is within noise" if noise else "")
    )


def side_by_side_text(doc: dict[str, Any]) -> str:
    """Both models on each evaluated slice, for a terminal."""
    from lineqc.train.report import support_text

    lines = []
    for name, s in doc["slices"].items():
        if "skipped" in s:
            lines.append(f"{name}: not evaluated ({s['skipped']})")
            continue
        lines.append(f"{name}: {support_text(s['champion'])}")
        lines.append(f"  {'metric':24s} {'champion':>22s} {'challenger':>22s}")
        lines += [f"  {k:24s} {a:>22s} {b:>22s}" for k, a, b in side_by_side(s)]
        if difference_text(s):
            lines.append(f"  {difference_text(s)}")
    return "\n".join(lines)


def comparison_markdown(doc: dict[str, Any], checks: list[Check]) -> str:
    from lineqc.train.report import fmt_value, md_table, support_text

    decision = doc["decision"]
    lines = [
        "# Retrain: challenger vs champion",
        "",
        f"**{decision['verdict']}**",
        "",
        *[f"- {r}" if i == 0 else f"  - {r}" for i, r in enumerate(decision["reasons"])],
        "",
        f"- Champion: `{doc['champion']['given']}` (run {doc['champion']['run_id']})",
        f"- Challenger: `{doc['challenger']['run']}` (run {doc['challenger']['run_id']}), "
        f"overrides: {', '.join(doc['challenger']['overrides']) or 'none'}",
        f"- Dataset: `{doc['dataset']}`, manifest `{doc['dataset_manifest_hash'][:16]}`; "
        f"{doc['since_champion']['sentence']}",
        f"- Compared as: {doc['compared_as']}",
        f"- Bundle: {doc['bundle']['path'] or doc['bundle']['reason']}",
        f"- A check is judged on {doc['min_support']} images or more; worse when its 95% "
        f"interval lies below -{doc['tolerance']:g}, better when above 0. Recent reviewed "
        f"frames: captured since {doc['recent_since']} and not trained on (split val or "
        "none); recent audit frames: those of them sampled at random among confident "
        "decisions",
    ]
    labels = doc.get("export_labels")
    if labels:
        lines.append(
            f"- Labels exported: {labels['exported']} ({labels['added']} new, "
            f"{labels['updated']} updated); {len(labels['kept_out'])} kept out of training; "
            f"{len(labels.get('conflicts', []))} label conflict(s)"
        )
    for name, s in doc["slices"].items():
        lines += ["", f"## Slice `{name}` ({s['n']} images)", ""]
        if "skipped" in s:
            lines.append(f"Not evaluated: {s['skipped']}.")
            continue
        head = ["metric", "champion [95% interval]", "challenger [95% interval]"]
        lines += [support_text(s["champion"]) + ", the same for both models.", ""]
        lines += [md_table(side_by_side(s), head), ""]
        if difference_text(s):
            lines += [difference_text(s) + ".", ""]
        rows = [
            [
                c.what,
                fmt_value(c.champion),
                fmt_value(c.challenger),
                c.difference,
                str(c.support),
                c.outcome.upper() if c.outcome in ("worse", "better") else c.outcome,
            ]
            for c in checks
            if c.slice == name
        ]
        head = ["check", "champion", "challenger", "difference [95%]", "images", "outcome"]
        lines.append(md_table(rows, head))
    if doc["not_compared"]:
        lines += ["", "Not compared: " + "; ".join(doc["not_compared"])]
    return "\n".join(lines) + "\n"
