"""The reject signal: what the line does with a defective part.

An actuator receives every reject decision (defects; uncertain frames too when the config
says ``reject_uncertain``). ``log`` writes one line per reject; ``none`` does nothing;
``hook`` loads ``package.module:factory`` (called with no arguments) and uses the object it
returns: any object with a ``reject(event)`` method (GPIO pin, PLC write, ...). An actuator
must return quickly: it runs on the inference thread.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Protocol

from lineqc.errors import LineqcError

from .config import ActuatorConfig

log = logging.getLogger("lineqc.edge.actuator")


@dataclass(frozen=True)
class RejectEvent:
    frame_id: str
    camera: str
    seq: int
    ts: float
    verdict: str
    label: str
    confidence: float
    reason: str | None


class Actuator(Protocol):
    def reject(self, event: RejectEvent) -> None: ...


class LoggingActuator:
    def __init__(self) -> None:
        self.count = 0

    def reject(self, event: RejectEvent) -> None:
        self.count += 1
        log.info(
            "REJECT %s %s %s (p=%.3f%s)",
            event.frame_id,
            event.verdict,
            event.label,
            event.confidence,
            f", {event.reason}" if event.reason else "",
        )


class NullActuator:
    def reject(self, event: RejectEvent) -> None:
        return None


def make_actuator(cfg: ActuatorConfig) -> Actuator:
    if cfg.kind == "none":
        return NullActuator()
    if cfg.kind == "log":
        return LoggingActuator()
    assert cfg.hook is not None  # the config requires it for kind=hook
    module_name, _, attr = cfg.hook.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        actuator = factory()
    except Exception as exc:
        raise LineqcError(f"actuator.hook {cfg.hook}: cannot load it ({exc})") from None
    if not callable(getattr(actuator, "reject", None)):
        raise LineqcError(f"actuator.hook {cfg.hook}: the object has no reject(event) method")
    return actuator  # type: ignore[no-any-return,unused-ignore]
