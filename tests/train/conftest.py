"""Shared fixtures: small synthetic datasets from the real generator, tiny configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lineqc.datasets.split import split_dataset
from lineqc.datasets.synth import synthesize
from lineqc.train.config import TrainConfig, from_dict


def make_dataset(root: Path, n: int, seed: int) -> Path:
    synthesize(root, n, seed, size=64, quiet=True)
    split_dataset(root, val=0.2, test=0.2, seed=seed)
    return root


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "ds", 96, seed=3)


@pytest.fixture(scope="session")
def other_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another dataset the models never saw (another seed)."""
    return make_dataset(tmp_path_factory.mktemp("synth_other") / "ds", 40, seed=11)


def make_config(**overrides: object) -> TrainConfig:
    doc: dict[str, object] = {
        "model": "resnet10t",
        "img_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "progress": False,
        "loss": {"name": "focal", "gamma": 2.0},
        "optim": {"lr": 0.003, "warmup_epochs": 0.5},
        "data": {"num_workers": 0},
        "tracking": {"mlflow": False},
    }
    doc.update(overrides)
    return from_dict(doc)


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """A factory of tiny-run configs (resnet10t at 32 px), keyword overrides per top key."""
    return make_config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synth_dataset: Path) -> Path:
    """One finished tiny run (with MLflow logging to a local file store)."""
    from lineqc.train.loop import train

    base = tmp_path_factory.mktemp("runs")
    cfg = make_config(tracking={"mlflow": True, "uri": (base / "mlruns").as_uri()})
    train(cfg, synth_dataset, base / "run")
    return base / "run"


@pytest.fixture(scope="session")
def metric_keys() -> tuple[str, ...]:
    """The keys the Training issue requires in metrics.json and `lineqc eval --json`."""
    return (
        "macro_f1",
        "balanced_accuracy",
        "auroc_defect_vs_ok",
        "recall_at_95_precision",
        "auroc_per_class",
        "ece_before",
        "ece_after",
        "temperature",
        "slices",
    )
