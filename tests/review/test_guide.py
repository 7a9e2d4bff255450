"""The class guide behind the `g` key: descriptions, which class means OK, and example
images from a dataset (never gold rows) or from frames the inspectors already agreed on.
Real synthetic datasets, the real app through TestClient, the real `lineqc review serve`
command for its options."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from lineqc.datasets import manifest as mf
from lineqc.edge.wire import Sample
from lineqc.errors import LineqcError
from lineqc.review.app import create_app
from lineqc.review.gold import add_gold
from lineqc.review.guide import DESCRIPTIONS, EXAMPLES_PER_CLASS, Guide
from lineqc.review.store import Frame, Store
from tests.review.test_app import Site, gold_args


def guide_of(page: str) -> dict[str, tuple[str, bool, list[str]]]:
    """class -> (description, marked OK, example URLs), as the frame page's guide shows it."""
    entries = re.findall(r'<li class="guide-entry" data-class="([^"]+)">(.*?)</li>', page, re.S)
    out = {}
    for name, body in entries:
        description = re.search(r'<p class="description">([^<]*)</p>', body)
        assert description
        urls = re.findall(r'<img src="([^"]+)" alt="an example of', body)
        out[name] = (description.group(1), "ok-badge" in body, urls)
    return out


def test_examples_from_a_dataset_skip_gold_rows_and_are_served(
    sqlite_store: Store, make_sample: Callable[..., Sample], synth_dataset: Path
) -> None:
    site = Site(sqlite_store, make_sample)
    manifest = mf.load(synth_dataset)
    classes = manifest.classes
    assert add_gold(gold_args(sqlite_store, synth_dataset, 40)) == 0
    with sqlite_store.session() as s:
        gold_ids = {f.removeprefix("gold-") for f in s.scalars(select(Frame.frame_id))}
    site.app = create_app(sqlite_store, guide=Guide.load(synth_dataset))
    pk = site.add("f1", classes=classes, probabilities=[0.25] * 4)
    ann = site.login("ann")
    guide = guide_of(ann.get(f"/frame/{pk}").text)
    assert list(guide) == classes
    for name, (description, is_ok, urls) in guide.items():
        assert description == DESCRIPTIONS[name]
        assert is_ok == (name == manifest.ok_class)
        assert len(urls) == EXAMPLES_PER_CLASS
        for url in urls:
            row = manifest.records[url.removeprefix("/example/")]
            assert row.label == name and row.id not in gold_ids
            response = ann.get(url)
            assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
            image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.shape[:2] == (row.height, row.width)
    some_gold = next(iter(gold_ids))
    for row_id in [some_gold, "nope", "..%2fmanifest.json"]:
        assert ann.get(f"/example/{row_id}").status_code == 404, row_id


def test_without_a_dataset_examples_come_from_agreed_frames(
    sqlite_store: Store, make_sample: Callable[..., Sample]
) -> None:
    site = Site(sqlite_store, make_sample)
    agreed, disputed = site.add("agreed"), site.add("disputed")
    site.add("audited", probabilities=[0.05, 0.9, 0.05], verdict="ok")  # scratch means OK here
    bob, carol = site.login("bob"), site.login("carol")
    bob.label(agreed, "dent")
    with sqlite_store.session() as s:
        s.get(Frame, disputed).required_reviews = 2
    bob.label(disputed, "ok")
    carol.label(disputed, "scratch")
    site.app = create_app(sqlite_store)  # a fresh guide: it reads the store once a minute
    pending = site.add("pending")
    page = site.login("ann").get(f"/frame/{pending}").text
    with sqlite_store.session() as s:
        agreed_sha = s.get(Frame, agreed).image_sha256
    guide = guide_of(page)
    assert guide["dent"][2] == [f"/image/{agreed_sha}"]
    assert guide["ok"][2] == [] and guide["scratch"][2] == []  # disputed: no example
    assert [name for name, (_, is_ok, _) in guide.items() if is_ok] == ["scratch"]
    assert "no example yet" in page


def test_a_guide_file_describes_the_plants_classes(tmp_path: Path) -> None:
    path = tmp_path / "guide.yaml"
    path.write_text("Porosity: tiny pores in clusters\nscratch: a line you can feel\n")
    guide = Guide.load(guide_file=path)
    assert guide.descriptions["porosity"] == "tiny pores in clusters"
    assert guide.descriptions["scratch"] == "a line you can feel"
    assert guide.descriptions["dent"] == DESCRIPTIONS["dent"]  # the built-in ones stay
    for text in ["- a list\n", "scratch: [1, 2]\n", "a: b: c\n"]:
        path.write_text(text)
        with pytest.raises(LineqcError, match=f"--guide {path}"):
            Guide.load(guide_file=path)


def test_serve_refuses_bad_guide_options(lineqc, tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "review.db")]
    for args, message in [
        (["--change-window", "-5"], "--change-window -5: must be 0"),
        (["--guide", str(tmp_path / "none.yaml")], f"--guide {tmp_path / 'none.yaml'}"),
        (["--dataset", str(tmp_path)], f"--dataset {tmp_path}: no labelled images"),
    ]:
        proc = lineqc("review", "serve", *db, "--port", "0", *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    helptext = lineqc("review", "serve", "--help").stdout
    for option in ["--dataset", "--guide", "--change-window"]:
        assert option in helptext


def test_examples_never_show_the_held_out_production_parts(tmp_path: Path) -> None:
    from lineqc.datasets.split import production_ids, split_dataset
    from lineqc.datasets.synth import synthesize
    from lineqc.review.guide import _dataset_examples

    synthesize(tmp_path, 60, seed=3, size=48, quiet=True)
    split_dataset(tmp_path, production=0.5, val=0.1, test=0.1)  # most parts held out
    manifest = mf.load(tmp_path)
    held = production_ids(manifest)
    examples = _dataset_examples(manifest, set())
    assert held and examples and not {r.id for rows in examples.values() for r in rows} & held
    for name, rows in examples.items():  # as many as the other rows allow
        others = [r for r in manifest if r.label == name and r.id not in held]
        assert len(rows) == min(EXAMPLES_PER_CLASS, len(others))
