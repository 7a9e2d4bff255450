"""`lineqc edge info` for a person (text) and for a script (--json)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable


def test_edge_info_reads_as_text_and_as_json(
    lineqc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    info = json.loads(lineqc("edge", "info", "--json").stdout)
    text = lineqc("edge", "info").stdout
    assert not any(c in text for c in "{}[]'")  # no Python reprs
    lines = dict(line.split(None, 1) for line in text.splitlines())
    assert lines["python"] == f"{info['python']} ({info['machine']})"
    ort = info["backends"]["onnxruntime"]
    assert lines["onnxruntime"] == f"{ort['version']}, providers: {', '.join(ort['providers'])}"
    assert lines["tensorrt"].startswith("installed" if "tensorrt" in info["backends"] else "not")
