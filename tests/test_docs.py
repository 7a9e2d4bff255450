"""The documents a user reads stand alone: every relative link resolves inside the repository,
and the README points at the architecture document kept here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOCS = [
    "README.md",
    "docs/DESIGN.md",
    "edge/WIRE.md",
    "edge/BUNDLE.md",
    *sorted(str(p.relative_to(REPO)) for p in REPO.glob("*/README.md")),
]


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_stay_in_the_repository(doc: str) -> None:
    path = REPO / doc
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):  # a web address
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(REPO), f"{doc}: {target} lies outside the repository"
        assert resolved.exists(), f"{doc}: {target} does not exist"


def test_the_readme_points_at_the_architecture_in_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "](docs/DESIGN.md)" in readme and "../shared/DESIGN.md" not in readme
    design = (REPO / "docs" / "DESIGN.md").read_text()
    for contract in ("edge/BUNDLE.md", "edge/WIRE.md", "edge/preprocess.py", "edge/decision.py"):
        assert contract in design
