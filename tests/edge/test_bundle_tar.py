"""Bundle tars on the device: a member that would expand past what the tar can hold (a huge
sparse file) is refused before anything is written, and a tar loaded into a temporary
folder leaves nothing behind there once the bundle is released (or the process ends)."""

from __future__ import annotations

import gc
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineqc.edge.bundle import BundleError, load_bundle, pack_tar
from lineqc.edge.signing import generate_keys
from tests.edge.bundles import tiny_bundle

HUGE = 64 * 1024**3  # 64 GiB, sparse: a few kilobytes on disk and in the tar


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """(bundle folder, public key): a real signed bundle with a tiny model."""
    private, public = generate_keys(tmp_path / "key")
    return tiny_bundle(tmp_path / "bundle", private), public


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The process's temporary folder, watched by the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


def sparse_tar(tmp_path: Path, bundle: Path) -> Path:
    """The bundle plus a 64 GiB sparse member, as GNU tar --sparse writes it."""
    work = tmp_path / "sparse"
    work.mkdir()
    for f in bundle.iterdir():
        (work / f.name).write_bytes(f.read_bytes())
    with open(work / "weights.bin", "wb") as f:
        f.truncate(HUGE)
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(tar), "-C", str(work), "."], check=True)
    return tar


def test_a_huge_sparse_member_is_refused_before_anything_is_written(
    tmp_path: Path, signed: tuple[Path, Path], temp_folder: Path
) -> None:
    bundle, public = signed
    tar = sparse_tar(tmp_path, bundle)
    assert tar.stat().st_size < 1024 * 1024
    with tarfile.open(tar) as archive:
        assert any(m.issparse() for m in archive.getmembers())
    dest = tmp_path / "unpacked"
    with pytest.raises(BundleError, match=r"weights\.bin"):
        load_bundle(tar, public, unpack_dir=dest)
    assert not dest.exists()
    with pytest.raises(BundleError, match=r"weights\.bin"):
        load_bundle(tar, public)
    assert list(temp_folder.iterdir()) == []


def test_a_member_larger_than_the_tar_can_hold_is_refused(
    tmp_path: Path, signed: tuple[Path, Path]
) -> None:
    """A gzip bomb: the declared sizes far exceed what a bundle's weights compress to."""
    bundle, public = signed
    tar = tmp_path / "bomb.tar.gz"
    zeros = tmp_path / "zeros.bin"
    with open(zeros, "wb") as f:
        f.write(b"\0" * (64 * 1024 * 1024))
    with tarfile.open(tar, "w:gz") as out:
        for f in bundle.iterdir():
            out.add(f, arcname=f.name)
        out.add(zeros, arcname="weights.bin")
    with pytest.raises(BundleError, match="expands to"):
        load_bundle(tar, public, unpack_dir=tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()


def test_a_tar_loaded_into_the_temp_folder_leaves_nothing_there(
    tmp_path: Path, signed: tuple[Path, Path], temp_folder: Path
) -> None:
    bundle_dir, public = signed
    tar = pack_tar(bundle_dir, tmp_path / "bundle.tar")
    bundle = load_bundle(tar, public)
    assert bundle.root.is_relative_to(temp_folder) and (bundle.root / "model.fp32.onnx").is_file()
    del bundle
    gc.collect()
    assert list(temp_folder.iterdir()) == []
    # A process that loads one and exits (lineqc bundle verify) leaves nothing either.
    code = f"from lineqc.edge.bundle import load_bundle as l; b = l({str(tar)!r}, {str(public)!r})"
    env = {"TMPDIR": str(temp_folder), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert list(temp_folder.iterdir()) == []
