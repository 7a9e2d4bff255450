"""PLC actuators: every decision written to a PLC over Modbus TCP or OPC UA, off the hot path.

The inference thread only appends the decision to a bounded queue (``submit``); a worker
thread running an asyncio loop writes it: Modbus TCP (pymodbus) a coil, then the decision
number in two holding registers; OPC UA (asyncua) one Write of the verdict node and the id
node. Each decision carries a deadline, ``actuator.deadline_ms`` after the decision; one the
PLC has not confirmed by then has *missed* it and gets the configured ``fail_safe``:

* it is counted when it is known (``plc_deadline_missed``, ``plc_fail_safe_<value>`` and
  ``plc_missed_<reason>``), at the deadline at the latest;
* its own verdict is never written once late (a write already on the wire completes);
* as soon as the link is up and no fresher decision waits, the fail-safe verdict is written
  with the id of the latest missed decision, so the PLC's outputs rest in the fail-safe
  state until the next decision arrives.

A lost link is reconnected with exponential backoff (``reconnect_min_s`` doubling up to
``reconnect_max_s``; the first retry is immediate). What the PLC sees, and what its program
must do when nothing arrives, is in ``edge/PLC.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from .actuator import BaseActuator, RejectEvent
from .config import ActuatorConfig, ModbusActuatorConfig, OpcUaActuatorConfig
from .telemetry import Ring, percentiles

log = logging.getLogger("lineqc.edge.plc")

MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class PlcRefused(Exception):
    """The PLC answered but did not take the write (address, type, access): the link is up."""


def decision_number(seq: int, bits: int = 32) -> int:
    """The number a PLC reads for frame ``seq``: seq + 1, wrapping within ``bits`` without
    ever being 0 (a register's power-up value: no decision yet)."""
    return seq % (2**bits - 1) + 1


class PlcLink(Protocol):
    """One connection to a PLC, used from the worker's event loop only."""

    endpoint: str
    requests_per_write: int  # each bounded by timeout_s

    async def connect(self) -> None: ...

    async def write(self, reject: bool, seq: int, frame_id: str) -> None:
        """Return once the PLC confirmed the write; PlcRefused when it answered no, any other
        exception when the link is broken."""

    async def close(self) -> None: ...


class ModbusLink:
    """pymodbus: the coil ``reject_coil`` (1 reject, 0 pass), then the decision number in the
    holding registers ``id_register`` and the next (unsigned 32-bit, high word first)."""

    def __init__(self, cfg: ModbusActuatorConfig, timeout_s: float) -> None:
        self.cfg, self.timeout_s = cfg, timeout_s
        self.endpoint = f"modbus://{cfg.host}:{cfg.port} unit {cfg.unit}"
        self.requests_per_write = 2
        self.client: Any = None
        _quiet_library_log("pymodbus")

    async def connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        # reconnect_delay=0: no reconnecting of its own, the actuator does it (with backoff).
        client = AsyncModbusTcpClient(
            self.cfg.host, port=self.cfg.port, timeout=self.timeout_s, retries=0,
            reconnect_delay=0,
        )  # fmt: skip
        self.client = client  # closed by close() if this fails or times out
        if not await client.connect():
            raise ConnectionError(f"no connection to {self.cfg.host}:{self.cfg.port}")

    def _checked(self, response: Any, what: str) -> None:
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            meaning = MODBUS_EXCEPTIONS.get(code, "unknown")
            raise PlcRefused(f"{what}: Modbus exception {code} ({meaning})")

    async def write(self, reject: bool, seq: int, frame_id: str) -> None:
        client, cfg = self.client, self.cfg
        if client is None or not client.connected:
            raise ConnectionError("not connected")
        number = decision_number(seq)
        response = await client.write_coil(cfg.reject_coil, reject, device_id=cfg.unit)
        self._checked(response, f"coil {cfg.reject_coil}")
        response = await client.write_registers(
            cfg.id_register, [number >> 16, number & 0xFFFF], device_id=cfg.unit
        )
        self._checked(response, f"holding registers {cfg.id_register}-{cfg.id_register + 1}")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()


# OPC UA built-in integer types: (bits, signed), by VariantType name.
_UA_INTEGERS = {
    "SByte": (8, True), "Byte": (8, False), "Int16": (16, True), "UInt16": (16, False),
    "Int32": (32, True), "UInt32": (32, False), "Int64": (64, True), "UInt64": (64, False),
}  # fmt: skip


class OpcUaLink:
    """asyncua: one Write of the verdict node and the id node, in that order. Their data
    types are read at connect: the verdict node Boolean (true = reject), an integer (1/0) or
    String ('reject'/'pass'); the id node String (the frame id) or an integer (the decision
    number, seq + 1, wrapped to the type)."""

    def __init__(self, cfg: OpcUaActuatorConfig, timeout_s: float) -> None:
        self.cfg, self.timeout_s = cfg, timeout_s
        self.endpoint = cfg.url
        self.requests_per_write = 1
        self.client: Any = None
        self.nodes: list[Any] = []
        self.types: list[Any] = []
        self.password = cfg.password_file.read_text().strip() if cfg.password_file else None
        _quiet_library_log("asyncua")

    async def connect(self) -> None:
        """Connect and read the two nodes' data types; a failure or a timeout part-way leaves
        the client in ``self.client`` for ``close`` to disconnect."""
        from asyncua import Client

        client = Client(self.cfg.url, timeout=self.timeout_s)
        if self.cfg.username:
            client.set_user(self.cfg.username)
        if self.password is not None:
            client.set_password(self.password)
        self.client, self.nodes, self.types = client, [], []
        await client.connect()
        nodes = [client.get_node(self.cfg.verdict_node), client.get_node(self.cfg.id_node)]
        types = [await node.read_data_type_as_variant_type() for node in nodes]
        verdict_type, id_type = (t.name for t in types)
        if verdict_type not in ("Boolean", "String", *_UA_INTEGERS):
            raise PlcRefused(
                f"verdict node {self.cfg.verdict_node} is {verdict_type}: Boolean, an integer "
                "or String expected"
            )
        if id_type not in ("String", *_UA_INTEGERS):
            raise PlcRefused(
                f"id node {self.cfg.id_node} is {id_type}: String or an integer expected"
            )
        self.nodes, self.types = nodes, types

    def values(self, reject: bool, seq: int, frame_id: str) -> list[Any]:
        verdict_type, id_type = self.types
        if verdict_type.name == "Boolean":
            verdict: Any = reject
        elif verdict_type.name == "String":
            verdict = "reject" if reject else "pass"
        else:
            verdict = int(reject)
        if id_type.name == "String":
            ident: Any = frame_id
        else:
            bits, signed = _UA_INTEGERS[id_type.name]
            ident = decision_number(seq, bits - 1 if signed else bits)
        return [verdict, ident]

    async def write(self, reject: bool, seq: int, frame_id: str) -> None:
        from asyncua import ua

        if self.client is None or not self.nodes:
            raise ConnectionError("not connected")
        values = [
            ua.DataValue(ua.Variant(value, vtype))
            for value, vtype in zip(self.values(reject, seq, frame_id), self.types, strict=True)
        ]
        # A broken session or channel raises here; a node refusing the value is a status code.
        results = await self.client.write_values(self.nodes, values, raise_on_partial_error=False)
        for node, status in zip(self.nodes, results, strict=True):
            if not status.is_good():
                raise PlcRefused(f"node {node.nodeid.to_string()}: {status.name}")

    async def close(self) -> None:
        client, self.client, self.nodes = self.client, None, []
        if client is not None:
            await _quietly(client.disconnect(), self.timeout_s)


def _quiet_library_log(name: str) -> None:
    """The library's warnings on every failed connect repeat what this module logs once."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:  # unless the device's logging set it
        logger.setLevel(logging.ERROR)


async def _quietly(coro: Coroutine[Any, Any, Any], timeout: float) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except Exception as exc:
        log.debug("ignored while closing: %r", exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Pending:
    event: RejectEvent
    deadline: float  # time.perf_counter()
    n: int  # submission order


class PlcActuator(BaseActuator):
    """Every decision to the PLC from a worker thread, each with a deadline and a fail-safe."""

    every_decision = True

    def __init__(self, link: PlcLink, cfg: ActuatorConfig, window: int = 2048) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.link = link
        self.deadline_s = cfg.deadline_ms / 1000
        self.fail_safe = cfg.fail_safe
        self.timeout_s = cfg.timeout_s
        # A write's own bound: the library times each request out (timeout_s); this only
        # catches one that hangs beyond them.
        self.write_limit_s = link.requests_per_write * cfg.timeout_s + 0.5
        self.backoff_min, self.backoff_max = cfg.reconnect_min_s, cfg.reconnect_max_s
        self.queue_size = cfg.queue_size
        self._queue: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._ring = Ring(window)
        self._n = 0
        self._failsafe_due: _Pending | None = None  # the latest missed decision, until superseded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._backoff = self.backoff_min
        self._next_attempt = 0.0
        self.connected = False
        self.ever_connected = False
        self.last_error: str | None = None
        self.down_since: float | None = time.monotonic()

    # ---- the inference thread ----------------------------------------------------------------

    def submit(self, event: RejectEvent) -> None:
        """Queue the decision for the PLC and return at once (the oldest beyond the bound miss)."""
        t = event.t_decision if event.t_decision is not None else time.perf_counter()
        with self._lock:
            self._n += 1
            if len(self._queue) >= self.queue_size:
                self._miss_locked(self._queue.popleft(), "queue_full")
            self._queue.append(_Pending(event, t + self.deadline_s, self._n))
        self._poke()

    def reject(self, event: RejectEvent) -> None:
        self.submit(event)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(wake.set)

    # ---- figures -----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def latency(self) -> dict[str, dict[str, float]]:
        """``plc_write``: decision to the PLC's confirmation, over the last writes (ms)."""
        return {"plc_write": percentiles(self._ring.snapshot())} if self._ring.n else {}

    def problem(self) -> str | None:
        if not self.connected:
            since = "" if self.down_since is None else (
                f" for {time.monotonic() - self.down_since:.0f} s"
            )  # fmt: skip
            return (
                f"plc {self.endpoint}: not connected{since} ({self.last_error or 'connecting'}); "
                f"decisions get the fail-safe ({self.fail_safe})"
            )
        if self.last_error:
            return f"plc {self.endpoint}: {self.last_error}"
        return None

    @property
    def endpoint(self) -> str:
        return self.link.endpoint

    # ---- bookkeeping (under the lock) --------------------------------------------------------

    def _miss_locked(self, item: _Pending, reason: str) -> None:
        self._counts["plc_deadline_missed"] += 1
        self._counts[f"plc_missed_{reason}"] += 1
        self._counts[f"plc_fail_safe_{self.fail_safe}"] += 1
        if self._failsafe_due is None or item.n >= self._failsafe_due.n:
            self._failsafe_due = item

    def _miss(self, item: _Pending, reason: str) -> None:
        with self._lock:
            self._miss_locked(item, reason)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _pop(self) -> _Pending | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _expire(self, before: float, reason: str) -> None:
        """Every queued decision whose deadline falls before ``before`` misses it now."""
        with self._lock:
            while self._queue and self._queue[0].deadline <= before:
                self._miss_locked(self._queue.popleft(), reason)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- the worker --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready)), name=f"plc-{self.kind}", daemon=True
        )
        self._thread.start()
        ready.wait(5)

    def close(self, timeout: float | None = None) -> None:
        """Write or expire what is queued (bounded by the deadline), then disconnect."""
        if self._thread is None:
            with self._lock:
                while self._queue:
                    self._miss_locked(self._queue.popleft(), "stopped")
            return
        self._stopping = True
        self._poke()
        limit = self.deadline_s + 2 * self.write_limit_s + 1 if timeout is None else timeout
        self._thread.join(limit)
        if self._thread.is_alive():
            log.warning("plc actuator: the worker did not stop within %.1f s", limit)

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass, a decision arrives or the actuator stops (the wake is
        cleared by the caller before it last looked at the queue)."""
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        ready.set()
        try:
            await self._serve()
        except Exception:  # a bug here must not leave the line without its counts
            log.exception("plc actuator: the worker failed")
            self.connected, self.last_error = False, "the worker failed (see the device log)"
            self._expire(math.inf, "error")
        finally:
            if self.connected:
                self.connected = False
                await _quietly(self.link.close(), self.timeout_s)
            self._loop = None

    async def _serve(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            now = time.perf_counter()
            if not self.connected:
                if self._stopping and (not self._queue or now < self._next_attempt):
                    self._expire(math.inf, "stopped")  # no waiting for a PLC at shutdown
                    return
                if now >= self._next_attempt:
                    await self._connect()
                    continue
                # Decisions due before the next attempt cannot be written in time.
                self._expire(self._next_attempt, "disconnected")
                await self._sleep(self._next_attempt - now)
                continue
            self._expire(now, "backlog")
            item = self._pop()
            if item is not None:
                await self._write(item)
            elif self._failsafe_due is not None:
                await self._write_fail_safe()
            elif self._stopping:
                return
            else:
                await self._sleep(1.0)

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.link.connect(), self.timeout_s)
        except Exception as exc:
            await _quietly(self.link.close(), self.timeout_s)
            self._count("plc_connect_failures")
            message = f"cannot connect: {_describe(exc)}"
            if message != self.last_error:
                log.warning("plc %s: %s (retrying with backoff)", self.endpoint, message)
                self.last_error = message
                self._changed()
            self._next_attempt = time.perf_counter() + self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            return
        self.connected = True
        if self.ever_connected:
            self._count("plc_reconnects")
        down = time.monotonic() - (self.down_since or time.monotonic())
        log.info(
            "plc %s: connected%s", self.endpoint,
            f" again after {down:.1f} s" if self.ever_connected else "",
        )  # fmt: skip
        self.ever_connected = True
        self.last_error, self.down_since = None, None
        self._backoff = self.backoff_min
        self._changed()

    async def _link_lost(self, exc: BaseException) -> None:
        self._count("plc_write_errors")
        self.connected = False
        self.down_since = time.monotonic()
        self.last_error = f"link lost: {_describe(exc)}"
        log.warning("plc %s: %s; reconnecting", self.endpoint, self.last_error)
        await _quietly(self.link.close(), self.timeout_s)
        self._next_attempt = time.perf_counter()  # first retry at once, then backoff
        self._backoff = self.backoff_min
        self._changed()

    def _refused(self, exc: PlcRefused) -> None:
        self._count("plc_write_errors")
        message = f"write refused: {exc}"
        if message != self.last_error:
            log.warning("plc %s: %s", self.endpoint, message)
            self.last_error = message
            self._changed()

    async def _write(self, item: _Pending) -> None:
        event = item.event
        task = asyncio.ensure_future(self.link.write(event.reject, event.seq, event.frame_id))
        done, _ = await asyncio.wait({task}, timeout=max(item.deadline - time.perf_counter(), 0))
        late = not done
        if late:  # counted at the deadline; the write on the wire still completes or fails
            self._miss(item, "slow")
        try:
            await asyncio.wait_for(task, self.write_limit_s)
        except PlcRefused as exc:
            self._refused(exc)
            if not late:
                self._miss(item, "refused")
            return
        except Exception as exc:
            if not late:  # tried again at once on a new connection, if one comes in time
                with self._lock:
                    self._queue.appendleft(item)
            await self._link_lost(exc)
            return
        confirmed = time.perf_counter()
        t0 = event.t_decision if event.t_decision is not None else item.deadline - self.deadline_s
        self._ring.add((confirmed - t0) * 1000)
        with self._lock:
            self._counts["plc_writes_late" if late else "plc_writes_ok"] += 1
            due = self._failsafe_due
            if due is not None and due.n < item.n:  # a newer decision stands on the PLC
                self._failsafe_due = None
        if self.last_error and not late:
            self.last_error = None
            self._changed()

    async def _write_fail_safe(self) -> None:
        item = self._failsafe_due
        assert item is not None
        event = item.event
        try:
            await asyncio.wait_for(
                self.link.write(self.fail_safe == "reject", event.seq, event.frame_id),
                self.write_limit_s,
            )
        except PlcRefused as exc:
            self._refused(exc)
        except Exception as exc:
            await self._link_lost(exc)
            return  # still due: written once the link is back
        else:
            self._count("plc_fail_safe_written")
        with self._lock:
            if self._failsafe_due is item:
                self._failsafe_due = None


def make_plc_actuator(cfg: ActuatorConfig, window: int = 2048) -> PlcActuator:
    link: PlcLink
    if cfg.kind == "modbus":
        assert cfg.modbus is not None  # the config requires it
        link = ModbusLink(cfg.modbus, cfg.timeout_s)
    else:
        assert cfg.opcua is not None
        link = OpcUaLink(cfg.opcua, cfg.timeout_s)
    return PlcActuator(link, cfg, window)
