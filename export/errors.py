"""Errors of the export stage (printed to the user without a traceback)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lineqc.errors import LineqcError

if TYPE_CHECKING:
    from .gate import GateResult


class ExportError(LineqcError):
    """An export that cannot go on; the message names the input and the reason."""


class GateFailed(ExportError):
    """The INT8 model lost too much accuracy against FP32; the message holds the gate's table."""

    def __init__(self, result: GateResult):
        super().__init__(
            "the INT8 model failed the accuracy gate (no bundle written)\n" + result.table()
        )
        self.result = result
