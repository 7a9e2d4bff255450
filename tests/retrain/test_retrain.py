"""`lineqc retrain`: reviewed labels exported, a real challenger trained with the champion's
config (train/configs/smoke.yaml), both evaluated on the frozen test split and the recent
reviewed frames, a decision with reasons, and a signed bundle only when promoted or forced.

One champion run is shared by the module; each retrain works on its own dataset copy."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lineqc.datasets import manifest as mf
from lineqc.datasets.labels import split_records
from lineqc.datasets.synth import candidates
from lineqc.edge.bundle import load_bundle
from lineqc.edge.signing import generate_keys
from lineqc.export.judge import decide_records
from lineqc.retrain.job import (
    RetrainError,
    RetrainOptions,
    recent_reviewed,
    resolve_champion,
    retrain,
)
from lineqc.review.store import Store
from lineqc.train.config import load_config
from lineqc.train.loop import train
from tests.review.kit import HOUR, NOW, Seeder, manifest_rows, seed, to_jpeg

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "train" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Path) -> Path:
    """The model in service: a smoke-config run on the shared synthetic dataset."""
    cfg = load_config(SMOKE, ["img_size=32", "progress=false"])
    out = tmp_path_factory.mktemp("champion") / "run"
    train(cfg, synth_dataset, out)
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys") / "signing")


def reviewed(tmp: Path, synth_dataset: Path) -> tuple[Path, str, Path]:
    """A copy of the dataset and a review store with reviewed frames: every consensus state,
    shots of dataset images, new line images, and one agreed frame captured 90 days ago."""
    dataset = Path(shutil.copytree(synth_dataset, tmp / "ds"))
    db, images = f"sqlite:///{tmp / 'review.db'}", tmp / "review-images"
    store = Store(db, images)
    seeder = Seeder(store)
    seed(seeder, dataset, n_new=12)
    old = next(iter(candidates(1, seed=123, size=64)))
    pk = seeder.frame("dev1-cam0-old", to_jpeg(old.read()), ts=NOW - 90 * 24 * HOUR)
    seeder.answer(pk, "erin", str(old.label))
    store.close()
    return dataset, db, images


@pytest.fixture(scope="module")
def forced(
    tmp_path_factory: pytest.TempPathFactory,
    synth_dataset: Path,
    champion: Path,
    keys: tuple[Path, Path],
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """`lineqc retrain --force --key`, as the monthly job runs it; (dataset, out, process)."""
    from tests.conftest import run_lineqc

    tmp = tmp_path_factory.mktemp("forced")
    dataset, db, images = reviewed(tmp, synth_dataset)
    out = tmp / "retrain"
    proc = run_lineqc(
        "retrain", "--dataset", str(dataset), "--champion", str(champion), "--out", str(out),
        "--db", db, "--images", str(images), "--key", str(keys[0]), "--force",
        "--no-gate",  # tiny models' INT8 gate is a coin toss; the gate has its own tests
        "--set", "epochs=1",
    )  # fmt: skip
    return dataset, out, proc


def test_forced_retrain_compares_on_both_slices_and_writes_a_verified_bundle(
    forced: tuple[Path, Path, subprocess.CompletedProcess[str]],
    synth_dataset: Path,
    champion: Path,
    keys: tuple[Path, Path],
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    dataset, out, proc = forced
    doc = json.loads((out / "comparison.json").read_text())

    # The labels went in first; the frozen test split is what it was.
    labels = doc["export_labels"]
    assert labels["added"] == labels["exported"] > 12 and len(labels["kept_out"]) == 1
    before = manifest_rows(synth_dataset)
    test_rows = {i: r for i, r in before.items() if json.loads(r)["split"] == "test"}
    after = manifest_rows(dataset)
    assert {i: after[i] for i in test_rows} == test_rows
    assert sum(json.loads(r)["split"] == "test" for r in after.values()) == len(test_rows)

    # A real challenger run, with the champion's config and the override.
    run = out / "challenger"
    assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()
    champion_cfg = load_config(champion / "config.yaml")
    challenger_cfg = load_config(run / "config.yaml")
    assert challenger_cfg.epochs == 1
    assert challenger_cfg.model_copy(update={"epochs": champion_cfg.epochs}) == champion_cfg

    # Both models on both slices; the recent slice is the recent reviewed rows not in train.
    manifest = mf.load(dataset)
    since = datetime.now(timezone.utc) - timedelta(days=30)
    recent = [r for r in manifest if r.label and recent_reviewed(since)(r)]
    assert recent and all(r.split != "train" for r in recent)
    assert not any(r.origin == "dev1-cam0-old" for r in recent)  # captured 90 days ago
    assert doc["slices"]["recent_reviewed"]["n"] == len(recent)
    assert doc["slices"]["test"]["n"] == len(test_rows)
    for name in ("test", "recent_reviewed"):
        s = doc["slices"][name]
        for who in ("champion", "challenger"):
            assert s[who]["n"] == s["n"]
            assert {"macro_f1", "slices"} <= set(s[who]) and "class" in s[who]["slices"]
    checks = doc["checks"]
    assert {c["slice"] for c in checks} == {"test", "recent_reviewed"}
    whats = {(c["slice"], c["what"]) for c in checks}
    assert {("test", "macro-F1"), ("recent_reviewed", "macro-F1")} <= whats
    assert any(w.startswith("macro-F1 of session ") for _, w in whats)  # test: 3 sessions
    assert any(w.startswith("recall of class ") for _, w in whats)
    # Each check: a paired difference with its interval over parts and its support.
    assert all(c["ok"] == (c["outcome"] != "worse") and c["support"] > 0 for c in checks)
    judged = [c for c in checks if c["outcome"] != "few"]
    assert all(c["support"] >= doc["min_support"] and c["interval"] for c in judged)

    # Named by its run, the champion has no deployed bundle to judge: checkpoints, said so.
    assert doc["compared_as"].startswith("FP32 checkpoints, argmax (the champion was named by")

    decision = doc["decision"]
    assert decision["forced"] is True and decision["reasons"]
    better = any(c["outcome"] == "better" for c in checks)
    assert decision["promoted"] == (all(c["ok"] for c in checks) and better)
    assert proc.returncode == 0 and decision["verdict"] in proc.stdout
    # Both models side by side on the same images, with intervals, in the report and output.
    assert doc["since_champion"]["known"] and doc["since_champion"]["training"]
    difference = doc["slices"]["test"]["macro_f1_difference"]
    assert difference["images"] == len(test_rows) and len(difference["interval"]) == 2
    assert "champion [95% interval]" in (out / "comparison.md").read_text()
    assert "macro-F1, challenger minus champion:" in proc.stdout

    # --force: a signed bundle that a device accepts, made from the challenger run.
    assert doc["bundle"]["exported"] is True and doc["bundle"]["path"] == str(out / "bundle")
    verified = lineqc("bundle", "verify", str(out / "bundle"), "--pubkey", str(keys[1]))
    assert "OK (signature valid" in verified.stdout
    bundle_manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert bundle_manifest["model"]["run_id"] == doc["challenger"]["run_id"]
    report = (out / "comparison.md").read_text()
    assert decision["verdict"] in report and "## Slice `recent_reviewed`" in report


def test_a_bundle_champion_resolves_to_its_source_run(
    forced: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    _, out, _ = forced
    bundle = out / "bundle"
    resolved = resolve_champion(bundle)  # its run is found beside it
    assert resolved.bundle == bundle and resolved.run == out / "challenger" / "best.pt"
    assert resolved.config == load_config(out / "challenger" / "config.yaml")

    alone = Path(shutil.copytree(bundle, tmp_path / "elsewhere" / "bundle"))
    with pytest.raises(RetrainError, match=r"exported from run [0-9a-f]+, whose config is not"):
        resolve_champion(alone)
    assert resolve_champion(alone, runs=[out]).run == resolved.run
    with pytest.raises(RetrainError, match="neither a training run folder"):
        resolve_champion(tmp_path)


def test_a_deployed_champion_is_compared_as_deployed_with_its_policy(
    forced: tuple[Path, Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
    synth_dataset: Path,
    keys: tuple[Path, Path],
) -> None:
    """Named by its bundle, the champion is judged as its devices run it, against the
    challenger's candidate bundle: the default precision's model with its own policy."""
    _, forced_out, _ = forced
    deployed = load_bundle(forced_out / "bundle", keys[1])
    dataset = Path(shutil.copytree(synth_dataset, tmp_path / "ds"))
    out = tmp_path / "retrain"
    options = RetrainOptions(key=keys[0], gate=False, overrides=["epochs=1"])
    result = retrain(dataset, forced_out / "bundle", out, options)

    doc = json.loads((out / "comparison.json").read_text())
    assert doc["compared_as"].startswith(
        f"deployed: champion {deployed.version} ({deployed.default_precision}, its decision "
        "policy); challenger "
    )
    checks = {(c["slice"], c["what"]): c for c in doc["checks"]}
    test = split_records(mf.load(dataset), "test", dataset)
    ok = [r for r in test if r.label == mf.load(dataset).ok_class]
    for what, verdict, support in [
        ("frames sent to review", "uncertain", len(test)),
        ("OK frames rejected", "defect", len(ok)),
    ]:
        check = checks[("test", what)]
        assert check["lower_is_better"] and check["support"] == support
        # the champion's figure is what its bundle's model and policy decide on those rows
        decided = decide_records(deployed, deployed.default_precision, dataset, test)
        rows = test if what == "frames sent to review" else ok
        chosen = [v for r, v in zip(test, decided.verdicts, strict=True) if r in rows]
        assert check["champion"] == pytest.approx(chosen.count(verdict) / len(rows))
    assert ("test", "macro-F1") in checks
    # A candidate is signed for the comparison, kept only when promoted or forced.
    assert not (out / "candidate").exists()
    assert (out / "bundle").exists() == result.decision.export
    if not result.decision.export:
        assert "candidate bundle was deleted" in doc["bundle"]["reason"]
    assert "- Compared as: deployed: champion" in (out / "comparison.md").read_text()


def test_a_worse_challenger_is_refused_and_no_bundle_written(
    tmp_path: Path, synth_dataset: Path, champion: Path, keys: tuple[Path, Path]
) -> None:
    # Cripple the challenger: all loss weight on the class the champion predicts least, so
    # it predicts that class everywhere and loses the recall the champion has elsewhere.
    with (champion / "predictions.csv").open() as f:
        predicted = Counter(row["predicted"] for row in csv.DictReader(f))
    classes = mf.load(synth_dataset).classes
    target = min(classes, key=lambda c: (predicted[c], c))
    weights = [1.0 if c == target else 1e-6 for c in classes]
    out = tmp_path / "retrain"
    options = RetrainOptions(
        key=keys[0],
        overrides=["epochs=1", "optim.lr=0.05", f"loss.class_weights={weights}"],
    )
    dataset = Path(shutil.copytree(synth_dataset, tmp_path / "ds"))
    result = retrain(dataset, champion, out, options)

    assert result.exit_code == 0 and result.bundle is None
    assert not result.decision.promoted and not result.decision.forced
    assert result.decision.verdict.startswith("KEPT CHAMPION")
    assert not (out / "bundle").exists()
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["bundle"] == {
        "exported": False,
        "path": None,
        "reason": "the challenger was not promoted (--force exports it anyway)",
    }
    # Its macro-F1 fell; on a test split this small (24 images) the drop may or may not be
    # credible, and the champion stays either way.
    overall = next(c for c in doc["checks"] if (c["slice"], c["what"]) == ("test", "macro-F1"))
    assert overall["delta"] < 0 and overall["outcome"] in ("worse", "same")
    worse = [c for c in doc["checks"] if not c["ok"]]
    assert all(c["interval"][1] < 0 and c["outcome"] == "worse" for c in worse)
    if worse:
        assert doc["decision"]["reasons"][0].startswith(f"credibly worse on {len(worse)} of")
        assert any(" fell " in r for r in doc["decision"]["reasons"][1:])
        assert "WORSE" in (out / "comparison.md").read_text()
    else:
        assert doc["decision"]["kind"] == "no-better"
    assert doc["slices"]["recent_reviewed"] == {
        "n": 0,
        "skipped": "no labelled images in this slice",
    }  # no --db: no reviewed frames


def test_cli_refuses_a_used_out_folder_and_a_champion_that_is_no_model(
    tmp_path: Path, synth_dataset: Path, lineqc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "comparison.json").write_text("{}")
    args = ("retrain", "--dataset", str(synth_dataset), "--out")
    proc = lineqc(*args, str(used), "--champion", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not empty; each retrain gets a fresh folder" in proc.stderr
    proc = lineqc(*args, str(tmp_path / "new"), "--champion", str(synth_dataset), check=False)
    assert proc.returncode == 2 and "not a model bundle" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_no_new_training_rows_trains_nothing_unless_forced(
    tmp_path: Path,
    synth_dataset: Path,
    champion: Path,
    keys: tuple[Path, Path],
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # The only reviewed frame is a shot of a test image: exported, but kept out of training.
    dataset = Path(shutil.copytree(synth_dataset, tmp_path / "ds"))
    db, images = f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "review-images"
    store = Store(db, images)
    seeder = Seeder(store)
    test_row = mf.load(dataset).in_split("test")[0]
    pk = seeder.frame("dev1-cam0-t", to_jpeg((dataset / test_row.path).read_bytes()))
    seeder.answer(pk, "ann", str(test_row.label))
    store.close()
    out = tmp_path / "retrain"
    proc = lineqc(
        "retrain", "--dataset", str(dataset), "--champion", str(champion), "--out", str(out),
        "--db", db, "--images", str(images), "--key", str(keys[0]),
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("NOT RETRAINED: no new training rows since the champion")
    assert "1 reviewed row(s) added since the champion trained, 0 of them in train or val" in (
        proc.stdout
    )
    assert not (out / "challenger").exists() and not (out / "bundle").exists()
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["decision"]["kind"] == "not-retrained" and not doc["decision"]["promoted"]
    assert doc["export_labels"]["exported"] == 1 and doc["bundle"]["exported"] is False

    # --force trains the same recipe on the same rows: the champion again, never signed.
    forced = retrain(
        dataset, champion, tmp_path / "forced", RetrainOptions(force=True, key=keys[0])
    )
    assert forced.decision.kind == "identical" and not forced.decision.promoted
    assert forced.bundle is None and not (tmp_path / "forced" / "bundle").exists()
    assert forced.decision.verdict.startswith("KEPT CHAMPION: the challenger is the champion")
