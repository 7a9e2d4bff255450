"""The wheel carries the files the package reads at run time, not only its modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_includes_configs_migrations_templates_and_schemas(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(REPO), "-w", str(tmp_path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("lineqc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "lineqc/train/configs/default.yaml",
        "lineqc/train/configs/baseline.yaml",
        "lineqc/review/migrations/env.py",
        "lineqc/review/migrations/versions/0001_review_store.py",
        "lineqc/review/templates/frame.html",
        "lineqc/edge/WIRE.md",
    ):
        assert needed in names, needed
