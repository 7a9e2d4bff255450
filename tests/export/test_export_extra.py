"""`pip install '.[export]'` alone runs `lineqc export`: the export imports nothing that only
the training extra installs (albumentations, scikit-learn, matplotlib, MLflow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lineqc.edge.bundle import load_bundle

TRAINING_ONLY = ("albumentations", "sklearn", "matplotlib", "mlflow")


def without_training_extra(folder: Path) -> dict[str, str]:
    """An environment where each training-only package fails to import, as where it is not
    installed (a package that raises, found first on the path)."""
    for name in TRAINING_ONLY:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('No module named {name!r} (export extra only)', "
            f"name={name!r})\n"
        )
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
    }


def test_export_runs_without_the_training_extra(
    tiny_run: Path, export_dataset: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    env = without_training_extra(tmp_path / "absent")
    probe = [sys.executable, "-c", "import lineqc.train.data"]
    assert (
        "export extra only" in subprocess.run(probe, env=env, capture_output=True, text=True).stderr
    )
    out = tmp_path / "bundle"
    args = ["export", str(tiny_run), "--dataset", str(export_dataset), "--out", str(out)]
    args += ["--key", str(keys[0]), "--calib-size", "64", "--latency-reps", "10"]
    proc = subprocess.run(
        [sys.executable, "-m", "lineqc", *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_bundle(out, keys[1]).classes
