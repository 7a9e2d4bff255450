"""The device runtime must import and run where torch, timm and albumentations are absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

# Runs first in the child: any import of the training stack fails as on a device.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {"torch", "torchvision", "timm", "albumentations"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the edge runtime must not import it")
        return None
sys.meta_path.insert(0, Block())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120
    )


def test_blocker_really_blocks() -> None:
    proc = _run_blocked("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_edge_package_imports_and_preprocesses_without_torch(tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8))
    proc = _run_blocked(
        "import pkgutil, importlib, cv2\n"
        "import lineqc.edge\n"
        "for m in pkgutil.iter_modules(lineqc.edge.__path__):\n"
        "    importlib.import_module('lineqc.edge.' + m.name)\n"
        "from lineqc.edge.preprocess import PreprocessSpec, preprocess\n"
        f"x = preprocess(cv2.imread({str(image)!r}, 0), PreprocessSpec(32, 32, 1))\n"
        "print(x.shape)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 32, 32)"


def test_edge_cli_runs_without_torch(tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), np.full((50, 70, 3), 100, np.uint8))
    run = "from lineqc.cli import main\nraise SystemExit(main({args!r}))\n"
    info = _run_blocked(run.format(args=["edge", "info", "--json"]))
    assert info.returncode == 0, info.stderr
    assert "onnxruntime" in json.loads(info.stdout)["backends"]
    pre = _run_blocked(
        run.format(args=["edge", "preprocess", str(image), "--size", "64", "--json"])
    )
    assert pre.returncode == 0, pre.stderr
    assert json.loads(pre.stdout)["tensor_shape"] == [1, 64, 64]
