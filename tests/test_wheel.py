"""The wheel carries the files the package reads at run time, not only its modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_includes_configs_migrations_templates_and_schemas(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         str(REPO), "-w", str(tmp_path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # `make setup` shows no page of packaging warnings: setuptools has none to give.
    log = build.stdout + build.stderr
    assert "Warning" not in log and "absent from the `packages`" not in log, log
    (wheel,) = tmp_path.glob("lineqc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "lineqc/train/configs/default.yaml",
        "lineqc/train/configs/baseline.yaml",
        "lineqc/review/migrations/env.py",
        "lineqc/review/migrations/versions/0001_review_store.py",
        "lineqc/review/migrations/script.py.mako",
        "lineqc/review/templates/frame.html",
        "lineqc/review/static/style.css",
        "lineqc/review/static/frame.js",
        "lineqc/edge/WIRE.md",
    ):
        assert needed in names, needed
