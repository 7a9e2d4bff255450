"""Logging for the long-running review commands (collector, web app): one line per event on
standard error, with the time, unless the caller configured logging already."""

from __future__ import annotations

import logging
import sys


def configure() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
