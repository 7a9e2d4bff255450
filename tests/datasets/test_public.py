"""Finding the public magnetic-tile images: MT_SRC, a local copy, a clone when online, and
offline a clear message (and `make demo`'s synthetic fallback). No test uses the network:
"offline" is a closed loopback port, "online" a local git repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lineqc.datasets.manifest import load
from lineqc.datasets.public import MAGNETIC_TILE_GIT

REPO = Path(__file__).resolve().parents[2]
OFFLINE = "https://127.0.0.1:9/Magnetic-tile-defect-datasets..git"  # nothing listens there


def find(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lineqc", "data", "find-magnetic-tile", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def tiles(root: Path, n: int = 2) -> Path:
    """A folder in the published layout, with a few small images."""
    for cls in ("Free", "Crack"):
        imgs = root / f"MT_{cls}" / "Imgs"
        imgs.mkdir(parents=True)
        for i in range(n):
            img = np.full((40, 60), 100 + 20 * i, np.uint8)
            cv2.imwrite(str(imgs / f"exp1_num_{100 + i}.jpg"), img)
    return root


def test_offline_without_a_copy_says_how_to_get_the_images(tmp_path: Path) -> None:
    done = find(tmp_path, "--copy", "nowhere", "--url", OFFLINE)
    assert done.returncode == 3 and done.stdout == ""
    msg = done.stderr
    assert "no copy at nowhere" in msg and "cannot be reached (offline?)" in msg
    assert f"git clone --depth 1 {MAGNETIC_TILE_GIT} data/source/magnetic-tile" in msg
    assert "abin24/Magnetic-tile-defect-datasets." in msg and "MT_SRC" in msg
    assert "Surface defect saliency of magnetic tile" in msg and "Visual Computer" in msg
    assert not (tmp_path / "data").exists()  # nothing half-fetched left behind


def test_mt_src_wins_and_a_wrong_one_is_an_error(tmp_path: Path) -> None:
    src = tiles(tmp_path / "mine")
    local = tiles(tmp_path / "data" / "source" / "magnetic-tile")
    assert find(tmp_path).stdout.strip() == "data/source/magnetic-tile"
    assert find(tmp_path, "--src", str(src)).stdout.strip() == str(src)
    wrong = find(tmp_path, "--src", str(tmp_path / "data"))
    assert wrong.returncode == 2 and "no MT_<Class>/Imgs folders" in wrong.stderr
    assert local.is_dir()


def test_online_it_clones_the_repository_once(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    upstream = tiles(tmp_path / "upstream")
    git = ["git", "-C", str(upstream), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "tiles"], check=True)
    work = tmp_path / "work"
    work.mkdir()
    url = upstream.as_uri()
    done = find(work, "--copy", "data/source/magnetic-tile", "--url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "data/source/magnetic-tile"
    assert f"fetched {url}" in done.stderr
    clone = work / "data" / "source" / "magnetic-tile"
    assert sorted(p.name for p in (clone / "MT_Crack" / "Imgs").iterdir()) == [
        "exp1_num_100.jpg", "exp1_num_101.jpg",
    ]  # fmt: skip
    again = find(work, "--copy", "data/source/magnetic-tile", "--url", OFFLINE)
    assert again.returncode == 0 and "local copy" in again.stderr  # no second download
    # a repository without the layout is no copy: refused, nothing left behind
    other = find(work, "--copy", "elsewhere", "--url", (tmp_path / "work").as_uri())
    assert other.returncode == 3 and "git clone" in other.stderr
    assert not (work / "elsewhere").exists() and not (work / ".elsewhere.partial").exists()


def test_make_demo_data_offline_falls_back_to_synthetic_parts(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    data = tmp_path / "data"
    done = subprocess.run(
        ["make", "-s", "-o", "setup", "demo-data", f"VENV={sys.prefix}", f"DATA={data}",
         f"MT_COPIES={tmp_path / 'none'}", f"MT_URL={OFFLINE}", "SYNTH_N=40"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cannot be reached (offline?)" in done.stderr and "cite the paper" in done.stderr
    assert "runs on synthetic parts" in done.stdout
    manifest = load(data / "synthetic")
    assert len(manifest) == 40
    assert not (data / "magnetic-tile").exists()
