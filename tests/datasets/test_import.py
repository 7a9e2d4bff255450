"""Import: provenance rows, idempotency, atomicity, duplicates, and the real data."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lineqc.datasets import importers
from lineqc.datasets import manifest as mf
from lineqc.datasets.importers import imagefolder
from lineqc.datasets.ingest import Candidate, ingest
from lineqc.datasets.split import split_dataset
from lineqc.datasets.storage import read_image
from lineqc.datasets.synth import candidates as synth_candidates


def _folder(tmp_path: Path, n: int = 6) -> Path:
    src = tmp_path / "src"
    for i, cand in enumerate(synth_candidates(n, seed=3, size=64)):
        target = src / str(cand.label) / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(cand.read())
    return src


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_rows_carry_provenance_and_images_read_back(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    ingest(
        tmp_path / "ds", imagefolder(src, session="s1", license="CC0"), import_name="t", quiet=True
    )
    manifest = mf.load(tmp_path / "ds")
    assert len(manifest) == 6
    for rec in manifest:
        assert rec.source == "src" and rec.session == "s1" and rec.license == "CC0"
        assert rec.label_source == "importer:imagefolder" and rec.label == rec.origin.split("/")[0]
        assert (rec.width, rec.height, rec.channels) == (64, 64, 1)
        image = read_image(tmp_path / "ds", rec)
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert len(rec.phash) == 16 and len(rec.sha256) == 64


def test_importing_twice_is_idempotent(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    first = ingest(tmp_path / "ds", imagefolder(src), import_name="a", quiet=True)
    rows = [r.to_json() for r in mf.load(tmp_path / "ds")]
    files = _tree(tmp_path / "ds" / "images")
    again = ingest(tmp_path / "ds", imagefolder(src), import_name="b", quiet=True)
    assert (first.added, again.added, again.unchanged) == (6, 0, 6)
    assert [r.to_json() for r in mf.load(tmp_path / "ds")] == rows
    assert _tree(tmp_path / "ds" / "images") == files


def test_a_failed_import_leaves_the_dataset_as_it_was(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    ds = tmp_path / "ds"
    ingest(ds, imagefolder(src)[:3], import_name="first", quiet=True)
    before = _tree(ds)

    def dying_source() -> Iterator[Candidate]:
        yield from synth_candidates(4, seed=99, size=64)  # new images, staged ...
        raise OSError("source share went away")  # ... then the source fails

    with pytest.raises(OSError, match="went away"):
        ingest(ds, dying_source(), import_name="second", quiet=True)
    assert _tree(ds) == before
    assert not list(ds.glob(".staging-*"))


def test_reimport_keeps_splits_and_frozen_test(tmp_path: Path) -> None:
    src = _folder(tmp_path, n=12)
    ds = tmp_path / "ds"
    ingest(ds, imagefolder(src), import_name="a", quiet=True)
    split_dataset(ds, val=0.2, test=0.3, seed=1)
    splits = {r.id: r.split for r in mf.load(ds)}
    ingest(ds, imagefolder(src), import_name="b", quiet=True)
    assert {r.id: r.split for r in mf.load(ds)} == splits


def test_exact_and_near_duplicates_are_grouped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (96, 96), dtype=np.uint8), (9, 9), 0)
    other = cv2.GaussianBlur(rng.integers(0, 255, (96, 96), dtype=np.uint8), (9, 9), 0)
    png = cv2.imencode(".png", base)[1].tobytes()
    (src / "ok" / "a.png").write_bytes(png)
    (src / "ok" / "a_copy.png").write_bytes(png)  # exact duplicate
    (src / "ok" / "a_recoded.jpg").write_bytes(  # near duplicate: re-encoded, lossy
        cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    )
    (src / "ok" / "b.png").write_bytes(cv2.imencode(".png", other)[1].tobytes())
    report = ingest(tmp_path / "ds", imagefolder(src), import_name="t", quiet=True)
    by_origin = {r.id: r.origin for r in mf.load(tmp_path / "ds")}
    exact = [sorted(by_origin[i] for i in g) for g in report.exact_groups]
    near = [sorted(by_origin[i] for i in g) for g in report.near_groups]
    assert exact == [["ok/a.png", "ok/a_copy.png"]]
    assert near == [["ok/a.png", "ok/a_copy.png", "ok/a_recoded.jpg"]]


@pytest.mark.realdata
def test_magnetic_tile_import_and_hold_out_session(tmp_path: Path, magnetic_tile: Path) -> None:
    ds = tmp_path / "mt"
    report = ingest(
        ds, importers.magnetic_tile(magnetic_tile), import_name="mt", ok_class="Free", quiet=True
    )
    manifest = mf.load(ds)
    assert len(manifest) == 1119 and report.rejected == []
    assert Counter(r.label for r in manifest) == {
        "Blowhole": 96,
        "Break": 70,
        "Crack": 47,
        "Fray": 26,
        "Free": 794,
        "Uneven": 86,
    }
    assert sorted({r.session for r in manifest}) == [f"exp{k}" for k in range(6)]
    assert all(r.mask_path and (ds / r.mask_path).is_file() for r in manifest)
    assert manifest.ok_class == "Free"

    split = split_dataset(ds, hold_out_session="exp3", seed=0)
    manifest = mf.load(ds)
    assert all(r.split == "test" for r in manifest if r.session == "exp3")
    assert {r.split for r in manifest} == {"train", "val", "test"}
    assert split.pulled_into_test > 0  # re-shots of exp3's tiles in other sessions follow them


def test_an_image_opencv_cannot_decode_is_one_reject(tmp_path: Path, lineqc) -> None:
    """A PNG Pillow reads but OpenCV refuses (1,100,000 px wide: over OpenCV's width limit)
    is rejected with its reason; the other images are imported."""
    src = _folder(tmp_path, n=4)
    wide = io.BytesIO()
    Image.new("L", (1_100_000, 8)).save(wide, "PNG")
    (src / "ok").mkdir(exist_ok=True)
    (src / "ok" / "wide.png").write_bytes(wide.getvalue())
    proc = lineqc(
        "data", "import", str(src), "--format", "imagefolder", "--dataset", str(tmp_path / "ds")
    )
    assert "rejected " in proc.stderr and "wide.png: unreadable: " in proc.stderr
    assert "OpenCV cannot decode" in proc.stderr
    assert "imported 4 images" in proc.stderr and "rejected 1" in proc.stderr
    assert len(mf.load(tmp_path / "ds")) == 4


def test_links_out_of_the_source_folder_are_refused(tmp_path: Path) -> None:
    src = _folder(tmp_path, n=4)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = next(iter(synth_candidates(1, seed=50, size=64))).read()
    (outside / "secret.png").write_bytes(secret)
    label = sorted(p.name for p in src.iterdir())[0]
    (src / label / "link-out.png").symlink_to(outside / "secret.png")
    (src / "linked-class").symlink_to(outside, target_is_directory=True)
    first = sorted((src / label).glob("img*.png"))[0]
    (src / label / "link-in.png").symlink_to(first)  # inside the tree: fine
    report = ingest(tmp_path / "ds", imagefolder(src), import_name="t", quiet=True)
    reasons = {Path(f).name: r for f, r in report.rejected}
    assert set(reasons) == {"link-out.png", "secret.png"}
    assert all(r.startswith("outside-source: a link to ") for r in reasons.values())
    assert report.added == 5
    stored = {r.sha256 for r in mf.load(tmp_path / "ds")}
    assert hashlib.sha256(secret).hexdigest() not in stored


def test_a_killed_import_leaves_no_staging_folder_after_the_next(tmp_path: Path) -> None:
    src = _folder(tmp_path, n=150)
    ds = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lineqc", "data", "import", str(src), "--format", "imagefolder",
           "--dataset", str(ds)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(ds.glob(".staging-*")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(ds.glob(".staging-*"))
    assert left, "the import was not killed while staging"
    live = ds / f".staging-{os.getpid()}-0123abcd"  # a running import's: kept
    live.mkdir()
    legacy = ds / ".staging-89abcdef"  # an old-style name, a day old
    legacy.mkdir()
    os.utime(legacy, (time.time() - 86400, time.time() - 86400))
    report = ingest(ds, imagefolder(src)[:3], import_name="again", quiet=True)
    assert sorted(p.name for p in ds.glob(".staging-*")) == [live.name]
    assert sorted(report.warnings) == sorted(
        f"removed {p.name}, left by an import that did not finish" for p in [*left, legacy]
    )
