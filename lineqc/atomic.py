"""Durable file replacement, shared by the dataset layer, training and the device: a reader
sees the old file or the new one, and after a power cut the new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: a reader sees the old file or the new one,
    and after a power cut the new one (file and folder entry fsynced)."""
    atomic_write_many([(path, data)])


def atomic_write_many(files: Sequence[tuple[Path, bytes]]) -> None:
    """``atomic_write_bytes`` for many files at about the cost of one: every file is written
    before any is fsynced, so the filesystem's journal commits them together rather than
    one commit per file, and each folder is fsynced once."""
    temps: list[str] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        for tmp in temps:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, (path, _) in zip(temps, files, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(path.parent for path, _ in files):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
