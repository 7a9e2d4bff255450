"""DDP through torchrun: 2 CPU processes (gloo) against a single-process run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from lineqc.train.config import TrainConfig
from lineqc.train.loop import train
from lineqc.train.metrics import evaluate

pytestmark = pytest.mark.slow


def test_two_process_ddp_sees_the_same_samples_and_reports_the_same_way(
    synth_dataset: Path, tmp_path: Path, tiny_config: Callable[..., TrainConfig]
) -> None:
    cfg = tiny_config(balanced_sampling=True)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_json()))
    single = train(cfg, synth_dataset, tmp_path / "single")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "lineqc",
            "train",
            "--config",
            str(config_path),
            "--dataset",
            str(synth_dataset),
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_dir = tmp_path / "ddp"
    assert json.loads((ddp_dir / "run.json").read_text())["world_size"] == 2

    h1 = json.loads((tmp_path / "single" / "history.json").read_text())
    h2 = json.loads((ddp_dir / "history.json").read_text())
    assert [h["samples"] for h in h2] == [h["samples"] for h in h1]
    assert (
        h1[0]["samples"] == json.loads((ddp_dir / "run.json").read_text())["split_sizes"]["train"]
    )

    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert set(ddp) == set(single)
    assert ddp["n"] == single["n"] and ddp["split"] == single["split"]
    # the DDP run's metrics are what its own predictions give
    with (ddp_dir / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    classes = ddp["classes"]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    labels = np.array([classes.index(r["label"]) for r in rows])
    redo = evaluate(np.log(probs), labels, classes, classes.index(ddp["ok_class"]), 1.0)
    assert redo["macro_f1"] == pytest.approx(ddp["macro_f1"])
    assert redo["balanced_accuracy"] == pytest.approx(ddp["balanced_accuracy"])
