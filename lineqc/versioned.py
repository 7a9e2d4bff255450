"""Parsing a versioned JSON document: the bundle manifest and the MQTT messages share it."""

from __future__ import annotations

import json
from typing import Any

from .errors import LineqcError


def parse_versioned(
    data: bytes | str,
    what: str,
    key: str,
    version: int,
    error: type[LineqcError],
    label: str | None = None,
) -> dict[str, Any]:
    """``data`` as a JSON object whose ``key`` is ``version``; else ``error`` naming ``what``
    (and the version field as ``label``, default ``key``)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what}: not JSON ({exc})") from None
    except RecursionError:  # nesting deeper than the parser's stack: hostile or broken
        raise error(f"{what}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise error(f"{what}: not a JSON object")
    # An integer, not merely equal: true == 1 and 1.0 == 1 in Python, and neither is a version.
    if type(doc.get(key)) is not int or doc[key] != version:
        raise error(
            f"{what}: {label or key} {doc.get(key)!r} is not supported "
            f"(this lineqc reads {version})"
        )
    return doc
