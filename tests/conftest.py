"""Shared fixtures: synthetic datasets, the real magnetic-tile folder, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = Path(
    os.environ.get("LINEQC_MAGNETIC_TILE", REPO.parent / "shared" / "datasets" / "magnetic-tile")
)


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    if not (MAGNETIC_TILE / "MT_Free" / "Imgs").is_dir():
        pytest.skip(f"real data not found at {MAGNETIC_TILE} (set LINEQC_MAGNETIC_TILE)")
    return MAGNETIC_TILE


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset, split; read-only for the tests that share it."""
    from lineqc.datasets.split import split_dataset
    from lineqc.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(root, 120, seed=7, size=64, quiet=True)
    split_dataset(root, seed=0)
    return root


def run_lineqc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real `lineqc` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "lineqc", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"lineqc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def lineqc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The `lineqc` command, run as a user would (a subprocess)."""
    return run_lineqc
