"""The real data, ready to use: imported and split once, as ``make demo`` does."""

from __future__ import annotations

from pathlib import Path

from .importers import DEFAULT_OK_CLASS, magnetic_tile
from .ingest import ingest
from .manifest import manifest_path
from .split import split_dataset


def magnetic_tile_dataset(dataset: Path, source: Path) -> Path:
    """``dataset``: the magnetic-tile images of ``source`` imported and split by part (the
    default split), unless a dataset is already there."""
    if not manifest_path(dataset).exists():
        candidates = magnetic_tile(source)
        ingest(
            dataset,
            candidates,
            import_name=f"magnetic-tile {source}",
            ok_class=DEFAULT_OK_CLASS["magnetic-tile"],
            total=len(candidates),
        )
        split_dataset(dataset)
    return dataset
