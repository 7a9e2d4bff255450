"""Loopback PLCs for tests and the bench: a real pymodbus server and a real asyncua server.

Each runs in its own thread with its own event loop, on 127.0.0.1 and a free port (or the
one given, so a stopped server can come back where the actuator reconnects). Values are
read back on the server's side, from its own address space.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from .broker import free_port

T = TypeVar("T")


def _quiet(name: str) -> None:
    """The server library's notices (no security policy, listening) are not news here."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


class _LoopThread:
    """An event loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ModbusSim:
    """A Modbus TCP server (pymodbus) for one unit: ``size`` coils and holding registers."""

    def __init__(self, port: int | None = None, unit: int = 1, size: int = 64) -> None:
        self.port = port or free_port()
        self.unit, self.size = unit, size
        self.delay_s = 0.0  # answer every request this much later (a slow or busy PLC)
        self._runner: _LoopThread | None = None
        self.server: Any = None

    def start(self) -> ModbusSim:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        _quiet("pymodbus")

        def bits() -> list[SimData]:
            return [SimData(0, count=self.size, values=False, datatype=DataType.BITS)]

        def registers() -> list[SimData]:
            return [SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)]

        # Four separate blocks, as a PLC has: coils, discrete inputs, holding, input registers.
        async def delay(*request: Any) -> None:
            """Called on each access; the last argument is None unless it writes: one delay
            per write request (a write also reads back its values), reads not delayed."""
            if self.delay_s > 0 and request[-1] is not None:
                await asyncio.sleep(self.delay_s)

        device = SimDevice(
            self.unit, simdata=(bits(), bits(), registers(), registers()), action=delay
        )

        async def serve() -> Any:
            server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await server.serve_forever(background=True)
            return server

        self._runner = _LoopThread(f"modbus-sim-{self.port}")
        self.server = self._runner.call(serve())
        return self

    def stop(self) -> None:
        if self._runner is None:
            return
        self._runner.call(self.server.shutdown())
        self._runner.stop()
        self._runner = self.server = None

    def coil(self, address: int) -> bool:
        assert self._runner is not None
        return bool(self._runner.call(self.server.async_getValues(self.unit, 1, address, 1))[0])

    def registers(self, address: int, count: int) -> list[int]:
        assert self._runner is not None
        values = self._runner.call(self.server.async_getValues(self.unit, 3, address, count))
        return [int(v) for v in values]

    def number(self, address: int) -> int:
        """The unsigned 32-bit number in two holding registers, high word first."""
        high, low = self.registers(address, 2)
        return high << 16 | low

    def __enter__(self) -> ModbusSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OpcUaSim:
    """An OPC UA server (asyncua) with an object ``Line`` holding two writable variables:
    ``Reject`` (``verdict_type``) and ``PartId`` (``id_type``), in namespace 2."""

    def __init__(
        self, port: int | None = None, verdict_type: str = "Boolean", id_type: str = "UInt32"
    ) -> None:
        self.port = port or free_port()
        self.verdict_type, self.id_type = verdict_type, id_type
        self.url = f"opc.tcp://127.0.0.1:{self.port}/lineqc/"
        self.verdict_node = "ns=2;s=Line.Reject"
        self.id_node = "ns=2;s=Line.PartId"
        self._runner: _LoopThread | None = None
        self.server: Any = None
        self._nodes: dict[str, Any] = {}

    def start(self) -> OpcUaSim:
        from asyncua import Server, ua

        _quiet("asyncua")
        initial = {"Boolean": False, "String": ""}

        async def serve() -> Any:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            ns = await server.register_namespace("urn:lineqc:plcsim")
            line = await server.nodes.objects.add_object(f"ns={ns};s=Line", "Line")
            for name, vtype in (("Reject", self.verdict_type), ("PartId", self.id_type)):
                node = await line.add_variable(
                    f"ns={ns};s=Line.{name}", name, initial.get(vtype, 0),
                    varianttype=ua.VariantType[vtype],
                )  # fmt: skip
                await node.set_writable()
                self._nodes[name] = node
            await server.start()
            return server

        self._runner = _LoopThread(f"opcua-sim-{self.port}")
        self.server = self._runner.call(serve())
        return self

    def stop(self) -> None:
        if self._runner is None:
            return
        self._runner.call(self.server.stop())
        self._runner.stop()
        self._runner = self.server = None

    def value(self, name: str) -> Any:
        """``Reject`` or ``PartId``, read in the server."""
        assert self._runner is not None
        return self._runner.call(self._nodes[name].read_value())

    def __enter__(self) -> OpcUaSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
