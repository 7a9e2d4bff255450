"""End-to-end training on synthetic images: run folder, eval CLI, resume, errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lineqc.cli import main
from lineqc.edge.decision import softmax
from lineqc.train import checkpoint
from lineqc.train.config import TrainConfig
from lineqc.train.loop import RunError, train
from lineqc.train.metrics import evaluate
from lineqc.train.report import loss_text

pytestmark = pytest.mark.slow


def test_run_folder_holds_report_checkpoints_and_lineage(
    trained_run: Path, metric_keys: tuple[str, ...]
) -> None:
    for name in (
        "metrics.json",
        "report.html",
        "model_card.md",
        "best.pt",
        "best.json",
        "last.pt",
        "last.json",
        "config.yaml",
        "run.json",
        "history.json",
    ):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert all(k in metrics for k in metric_keys)
    assert metrics["split"] == "test" and metrics["temperature"] > 0
    assert {"class", "session", "source"} <= set(metrics["slices"])
    run = json.loads((trained_run / "run.json").read_text())
    assert len(run["dataset_manifest_hash"]) == 64 and run["seed"] == 0
    assert "torch" in run["environment"]["packages"]
    history = json.loads((trained_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h["data_wait_share"] <= 1 and h["images_per_s"] > 0 for h in history)
    html = (trained_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    card = (trained_run / "model_card.md").read_text()
    assert "Data lineage" in card and "Intended use" in card and "Limits" in card
    # the loss it trained with, and why the recommended recipe chose its loss
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert loss_text(config) == "focal loss (gamma 2)"  # the smoke recipe's
    assert f"- Loss: {loss_text(config)}. Focal loss (gamma 2) was measured" in card
    meta = json.loads((trained_run / "best.json").read_text())
    assert meta["temperature"] == pytest.approx(metrics["temperature"])
    assert meta["preprocess"]["height"] == 32 and meta["model"] == "resnet10t"


def test_metrics_json_agrees_with_the_predictions(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    with (trained_run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    classes = metrics["classes"]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    labels = np.array([classes.index(r["label"]) for r in rows])
    redo = evaluate(np.log(probs), labels, classes, classes.index(metrics["ok_class"]), 1.0)
    assert redo["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert redo["auroc_defect_vs_ok"] == pytest.approx(metrics["auroc_defect_vs_ok"], abs=1e-4)


def test_checkpoint_loads_weights_only_and_rebuilds_the_model(trained_run: Path) -> None:
    state = torch.load(trained_run / "best.pt", weights_only=True)
    assert set(state) == {"model"}
    model, meta = checkpoint.load_model(trained_run)
    x = torch.zeros(2, meta["preprocess"]["channels"], 32, 32)
    assert model(x).shape == (2, len(meta["classes"]))


def test_mlflow_run_was_logged(trained_run: Path) -> None:
    run = json.loads((trained_run / "run.json").read_text())
    store = trained_run.parent / "mlruns"
    metric_files = list(store.glob(f"*/{run['mlflow_run_id']}/metrics/macro_f1"))
    assert metric_files, "MLflow run has no macro_f1 metric"
    assert list(store.glob(f"*/{run['mlflow_run_id']}/metrics/val_macro_f1"))


def test_eval_cli_prints_the_same_keys(
    trained_run: Path,
    synth_dataset: Path,
    capsys: pytest.CaptureFixture[str],
    metric_keys: tuple[str, ...],
) -> None:
    assert (
        main(
            ["eval", str(trained_run), "--dataset", str(synth_dataset), "--split", "test", "--json"]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert all(k in printed for k in metric_keys)
    # the same model, split and temperature give the same numbers as at the end of training
    assert printed["macro_f1"] == pytest.approx(saved["macro_f1"])
    assert printed["ece_after"] == pytest.approx(saved["ece_after"], abs=1e-6)


def test_eval_cli_on_a_dataset_the_model_never_saw(
    trained_run: Path,
    other_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    metric_keys: tuple[str, ...],
) -> None:
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                str(trained_run),
                "--dataset",
                str(other_dataset),
                "--split",
                "all",
                "--json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert all(k in printed for k in metric_keys) and printed["n"] == 40
    assert (out / "report.html").is_file() and (out / "model_card.md").is_file()


def test_eval_of_an_empty_split_names_it(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(trained_run), "--dataset", str(tmp_path), "--json"]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_resume_reaches_the_same_weights(
    synth_dataset: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    cfg = tiny_config(
        epochs=2,
        optim={"lr": 0.003, "warmup_epochs": 0.5, "ema_decay": 0.9},
        data={"num_workers": 1},
    )
    train(cfg, synth_dataset, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int) -> None:
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, synth_dataset, tmp_path / "resumed", epoch_end=kill_after_first)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg, synth_dataset, tmp_path / "resumed")
    with pytest.raises(RunError, match=r"keys differ: epochs$"):
        train(
            cfg.model_copy(update={"epochs": 4}), synth_dataset, tmp_path / "resumed", resume=True
        )
    assert (
        main(
            [
                "train",
                "--dataset",
                str(synth_dataset),
                "--out",
                str(tmp_path / "resumed"),
                "--resume",
            ]
        )
        == 0
    )

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for name, value in whole[part].items():
            assert torch.equal(value, resumed[part][name]), f"{part}.{name}"
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert a["macro_f1"] == b["macro_f1"] and a["temperature"] == pytest.approx(b["temperature"])


def test_resume_without_a_run_is_an_error(
    synth_dataset: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    with pytest.raises(RunError, match="nothing to resume"):
        train(tiny_config(), synth_dataset, tmp_path / "none", resume=True)


def test_calibrated_probabilities_sum_to_one(trained_run: Path) -> None:
    with (trained_run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    sums = [sum(float(v) for k, v in r.items() if k.startswith("p_")) for r in rows]
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)
    assert softmax(np.zeros((1, 3)))[0, 0] == pytest.approx(1 / 3)


def test_a_finished_run_is_finished_again_with_other_scoring_keys(
    defect_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--resume`` on a finished run with another ``flip_views`` and ``defect_score`` scores
    the same weights again (temperature, metrics, report), without training; other keys are
    still refused."""
    import shutil

    from lineqc.train.config import load_config
    from lineqc.train.model import DefectNet

    dataset, run = defect_run
    again = tmp_path / "run"
    shutil.copytree(run, again)
    cfg = load_config(run / "config.yaml", ["flip_views=4"])
    with pytest.raises(RunError, match=r"keys differ: epochs$"):
        train(cfg.model_copy(update={"epochs": 9}), dataset, again, resume=True)
    args = ["--dataset", str(dataset), "--out", str(again), "--resume"]
    assert main(["train", *args, "--set", "flip_views=4", "--set", "defect_score=map"]) == 0

    before, _ = checkpoint.load_model(run)
    model, meta = checkpoint.load_model(again)
    assert isinstance(model, DefectNet) and model.flip_views == 4 and meta["flip_views"] == 4
    assert model.defect_score == "map" and meta["defect_score"] == "map"
    assert meta["config"]["flip_views"] == 4 and meta["config"]["defect_score"] == "map"
    saved = yaml.safe_load((again / "config.yaml").read_text())
    assert saved["flip_views"] == 4 and saved["defect_score"] == "map"
    for name, value in before.state_dict().items():  # the same weights, not trained again
        assert torch.equal(value, model.state_dict()[name]), name
    old = json.loads((run / "metrics.json").read_text())
    new = json.loads((again / "metrics.json").read_text())
    assert new["split"] == old["split"] and new["support"] == old["support"]
    assert new["temperature"] != old["temperature"]  # fitted again, on the views' logits
    with open(again / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == new["support"]["images"]
    assert "Scoring: each frame once." in (run / "model_card.md").read_text()
    card = (again / "model_card.md").read_text()
    assert "4 views in one batch" in card and "defect map's maximum" in card
