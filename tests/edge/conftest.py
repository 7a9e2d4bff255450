"""Edge fixtures: publishers on the real outbox (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lineqc.edge.config import DeviceConfig
from lineqc.edge.outbox import Outbox
from lineqc.edge.publisher import Publisher


@pytest.fixture
def publishers() -> Iterator[Callable[..., tuple[Publisher, Outbox]]]:
    """publishers(cfg, status=None): started publishers, stopped at the end."""
    made: list[tuple[Publisher, Outbox]] = []

    def make(cfg: DeviceConfig, **kwargs: Any) -> tuple[Publisher, Outbox]:
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes)
        pub = Publisher(cfg, outbox, **kwargs)
        pub.start()
        made.append((pub, outbox))
        return pub, outbox

    yield make
    for pub, outbox in made:
        pub.stop(0)
        outbox.close()
