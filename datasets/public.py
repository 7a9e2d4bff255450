"""Where the public magnetic-tile images are: a folder the user names, a local copy, or a
fresh clone of the published repository when the machine is online.

``make demo`` asks ``find_magnetic_tile``; when it returns nothing (offline, no copy), the
demo runs on synthetic parts instead and the user is told how to get the real images.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from .importers import MAGNETIC_TILE_PAPER
from .manifest import DatasetError

MAGNETIC_TILE_REPO = "https://github.com/abin24/Magnetic-tile-defect-datasets."  # sic: the dot
MAGNETIC_TILE_GIT = MAGNETIC_TILE_REPO + ".git"
# a local copy, in the order looked at: where this command clones it, and a shared folder
LOCAL_COPIES = (Path("data/source/magnetic-tile"), Path("../shared/datasets/magnetic-tile"))
CLONE_TIMEOUT_S = 600


def has_magnetic_tile(folder: Path) -> bool:
    """The published layout: ``MT_<Class>/Imgs`` folders."""
    return folder.is_dir() and any((p / "Imgs").is_dir() for p in folder.glob("MT_*"))


def how_to_get(dest: Path, why: str) -> str:
    """What a user without the images reads: why, where to get them, what to cite."""
    return "\n".join(
        [
            f"the real magnetic-tile images are not here: {why}.",
            "They are public; get them with",
            f"  git clone --depth 1 {MAGNETIC_TILE_GIT} {dest}",
            f"(or download {MAGNETIC_TILE_REPO} as an archive) and run again, or point",
            "MT_SRC at the folder holding MT_Blowhole, MT_Free, ... .",
            f"The authors ask users to cite the paper: {MAGNETIC_TILE_PAPER}.",
        ]
    )


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the host of ``url`` accepts a connection (a local path or file URL: always)."""
    parts = urlparse(url)
    if parts.scheme in ("", "file"):
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def clone(url: str, dest: Path, timeout: float = CLONE_TIMEOUT_S) -> Path:
    """``git clone --depth 1`` into ``dest`` through a partial folder, so a cut download
    never looks like a copy; DatasetError naming the reason when it fails."""
    if shutil.which("git") is None:
        raise DatasetError("git is not installed (apt-get install git)")
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["git", "clone", "--quiet", "--depth", "1", url, str(partial)]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(f"git clone {url} took over {timeout:g} s") from None
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DatasetError(f"git clone {url} failed: {last}")
    if not has_magnetic_tile(partial):
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(f"{url} holds no MT_<Class>/Imgs folders")
    os.replace(partial, dest)
    return dest


def find_magnetic_tile(
    src: Path | None = None,
    copies: tuple[Path, ...] = LOCAL_COPIES,
    fetch_to: Path | None = LOCAL_COPIES[0],
    url: str = MAGNETIC_TILE_GIT,
) -> tuple[Path | None, str]:
    """(folder, how it was found), or (None, what to do) when there is no copy and none can
    be fetched. ``src`` (MT_SRC) that is not the layout is an error: a user who names a
    folder means it."""
    if src is not None:
        if not has_magnetic_tile(src):
            raise DatasetError(f"MT_SRC={src}: no MT_<Class>/Imgs folders there")
        return src, f"MT_SRC={src}"
    for copy in copies:
        if has_magnetic_tile(copy):
            return copy, f"local copy {copy}"
    looked = ", ".join(str(c) for c in copies)
    if fetch_to is None:
        return None, how_to_get(LOCAL_COPIES[0], f"MT_SRC is unset and no copy at {looked}")
    if not reachable(url):
        why = f"no copy at {looked}, and {urlparse(url).hostname} cannot be reached (offline?)"
        return None, how_to_get(fetch_to, why)
    try:
        return clone(url, fetch_to), f"fetched {url} into {fetch_to}"
    except DatasetError as exc:
        return None, how_to_get(fetch_to, f"no copy at {looked}, and {exc}")
