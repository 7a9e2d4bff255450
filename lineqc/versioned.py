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
    if not isinstance(doc, dict):
        raise error(f"{what}: not a JSON object")
    if doc.get(key) != version:
        raise error(
            f"{what}: {label or key} {doc.get(key)!r} is not supported "
            f"(this lineqc reads {version})"
        )
    return doc
