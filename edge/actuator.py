"""The reject signal: what the line does with a defective part.

An actuator receives every reject decision (defects; uncertain frames too when the config
says ``reject_uncertain``). ``log`` writes one line per reject; ``none`` does nothing;
``hook`` loads ``package.module:factory`` (called with no arguments) and uses the object it
returns: any object with a ``reject(event)`` method (GPIO pin, ...); it runs on the
inference thread, so it must return quickly. ``modbus`` and ``opcua`` write every decision,
reject or pass, to a PLC from a worker thread, each with a deadline and a fail-safe
(``edge/plc.py``, ``edge/PLC.md``); the inference thread only queues the decision.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
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
    reject: bool = True  # False: a pass, given only to actuators that take every decision
    t_decision: float | None = None  # time.perf_counter() at the decision (deadline, latency)


class Actuator(Protocol):
    """What a hook's factory returns."""

    def reject(self, event: RejectEvent) -> None: ...


class BaseActuator:
    """What the runtime drives: ``submit`` per decision (every decision when
    ``every_decision``, else the rejects), figures for telemetry, a problem for the status."""

    every_decision = False
    kind = "none"

    def __init__(self) -> None:
        self.on_change: Callable[[], None] | None = None  # the runtime: publish the status

    def start(self) -> None:
        return None

    def submit(self, event: RejectEvent) -> None:
        if event.reject:
            self.reject(event)

    def reject(self, event: RejectEvent) -> None:
        return None

    def counters(self) -> dict[str, int]:
        return {}

    def latency(self) -> dict[str, dict[str, float]]:
        return {}

    def problem(self) -> str | None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


class LoggingActuator(BaseActuator):
    kind = "log"

    def __init__(self) -> None:
        super().__init__()
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


class NullActuator(BaseActuator):
    pass


class HookActuator(BaseActuator):
    """A site's own object with ``reject(event)``, called on the inference thread."""

    kind = "hook"

    def __init__(self, target: Actuator) -> None:
        super().__init__()
        self.target = target

    def reject(self, event: RejectEvent) -> None:
        self.target.reject(event)


def make_actuator(cfg: ActuatorConfig) -> BaseActuator:
    if cfg.kind == "none":
        return NullActuator()
    if cfg.kind == "log":
        return LoggingActuator()
    if cfg.kind in ("modbus", "opcua"):
        from .plc import make_plc_actuator  # asyncua / pymodbus only where a PLC is configured

        return make_plc_actuator(cfg)
    assert cfg.hook is not None  # the config requires it for kind=hook
    module_name, _, attr = cfg.hook.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        target = factory()
    except Exception as exc:
        raise LineqcError(f"actuator.hook {cfg.hook}: cannot load it ({exc})") from None
    if not callable(getattr(target, "reject", None)):
        raise LineqcError(f"actuator.hook {cfg.hook}: the object has no reject(event) method")
    return HookActuator(target)
