"""Run tracking: the run folder's facts (run.json) and logging to MLflow.

MLflow's local default here is a file store, ``./mlruns``; any tracking URI (config
``tracking.uri`` or ``$MLFLOW_TRACKING_URI``) replaces it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from lineqc.errors import LineqcError

from .config import TrackingConfig

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "numpy", "opencv-python-headless")


def git_commit() -> dict[str, Any]:
    """The commit of the code that trains (this package's checkout), and whether it is dirty."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def numeric(doc: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a nested metrics dict, flattened to dotted names (for MLflow)."""
    return {
        k.replace(" ", "_"): float(v)
        for k, v in _flatten(doc).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class MlflowRun:
    """One MLflow run, resumed by id when a killed training run continues."""

    def __init__(self, cfg: TrackingConfig, run_name: str, run_id: str | None = None):
        import mlflow  # slow to import; only when tracking is on

        uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses its file store unless asked; it is the local default here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._mlflow = mlflow
        try:
            mlflow.set_tracking_uri(uri)
            if run_id is None:
                mlflow.set_experiment(cfg.experiment)
            self.run = mlflow.start_run(run_id=run_id, run_name=run_name)
        except Exception as exc:  # any backend failure: name the URI
            raise LineqcError(f"MLflow tracking URI {uri}: cannot start a run ({exc})") from None
        self.uri = uri
        self.run_id: str = self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
        self._mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._mlflow.log_metrics(numeric(metrics), step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.exists():
                self._mlflow.log_artifact(str(path))

    def end(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)
