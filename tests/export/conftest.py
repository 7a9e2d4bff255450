"""Fixtures of the export tests: a small, well-fitted run, a key pair and one signed bundle.

The run is a tiny timm CNN fitted for a few seconds on a synthetic dataset and written in the
real checkpoint format (``lineqc.train.checkpoint.save``), so these tests need neither the
full training loop nor minutes of CPU. The session-scoped bundle is read-only: tests that
tamper with it work on a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lineqc.datasets.manifest import load, manifest_hash
from lineqc.datasets.split import split_dataset
from lineqc.datasets.synth import synthesize
from lineqc.edge.preprocess import PreprocessSpec
from lineqc.edge.signing import generate_keys
from lineqc.export import data
from lineqc.export.pipeline import ExportOptions, export_run
from lineqc.train import checkpoint
from lineqc.train.model import build_model

MODEL = "resnet10t"
SPEC = PreprocessSpec(height=32, width=32)
FAST = {"calib_size": 64, "latency_reps": 20}


@pytest.fixture(scope="session")
def export_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-data") / "ds"
    synthesize(root, 240, seed=3, size=64, quiet=True)
    split_dataset(root, seed=0)
    return root


def fit_run(dataset: Path, out: Path, steps: int = 120, seed: int = 0) -> Path:
    """Fit a tiny model and write it as a run folder (best.pt + best.json).

    120 steps, not fewer: the gate on 38 val images allows no top-1 flip, and a barely fitted
    model has val images so close to a class boundary that INT8 rounding flips them.
    """
    manifest = load(dataset)
    classes = manifest.classes
    meta = {"classes": classes, "ok_class": manifest.ok_class}
    train = data.split_inputs(dataset, manifest, "train", meta, SPEC)
    torch.manual_seed(seed)
    net = build_model(MODEL, len(classes), SPEC.channels)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    x, y = torch.from_numpy(train.inputs), torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True)
    checkpoint.save(
        out / "best.pt",
        {"model": net.eval().state_dict()},
        {
            "model": MODEL,
            "model_kwargs": {},
            "classes": classes,
            "ok_class": manifest.ok_class,
            "preprocess": SPEC.to_json(),
            "temperature": 1.5,
            "run_id": "testrun",
            "dataset_manifest_hash": manifest_hash(dataset),
            "epoch": 0,
        },
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(export_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_run(export_dataset, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys") / "signer")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys") / "stranger")


@pytest.fixture(scope="session")
def signed_bundle(
    tiny_run: Path,
    export_dataset: Path,
    keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """One real export (folder + tar), shared read-only."""
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    export_run(
        tiny_run, export_dataset, out, keys[0], ExportOptions(tar=True, model_version="5.0", **FAST)
    )
    return out


@pytest.fixture
def bundle_copy(signed_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the signed bundle, to tamper with."""
    return Path(shutil.copytree(signed_bundle, tmp_path / "bundle"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def flip_byte() -> Callable[[Path], None]:
    """Flip every bit of the middle byte of a file (real tampering)."""
    return _flip_byte


@pytest.fixture(scope="session")
def val_split(export_dataset: Path) -> data.SplitInputs:
    manifest = load(export_dataset)
    meta = {"classes": manifest.classes, "ok_class": manifest.ok_class}
    return data.split_inputs(export_dataset, manifest, "val", meta, SPEC)
