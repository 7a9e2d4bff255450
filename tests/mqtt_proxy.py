"""A TCP relay between MQTT clients and a real broker on loopback, for delivery tests.

It reads every packet a client sends on its way to the broker and records the PUBLISH
packets (what the broker receives, DUP flag included), can hold back what the broker sends
(``hold``: its PUBACKs never arrive, so the client's publishes stay in flight) and can cut
every connection at once (``cut``: a disconnect with messages in flight).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    dup: bool
    mid: int | None


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position) of an MQTT variable byte integer, None if incomplete."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("malformed remaining length")


class MqttProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.hold = threading.Event()  # set: the broker's bytes are dropped, not relayed
        self.publishes: list[Publish] = []
        self.connects = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # ---- the test's side ---------------------------------------------------------------------

    def cut(self) -> None:
        """Close every relayed connection (both ends) at once."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()

    def count(self, predicate: Callable[[Publish], bool] = lambda p: True) -> Counter[bytes]:
        """PUBLISH packets received so far, per payload."""
        with self._lock:
            return Counter(p.payload for p in self.publishes if predicate(p))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    # ---- the relay ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            broker.settimeout(None)
            with self._lock:
                self._socks += [client, broker]
                self.connects += 1
            threading.Thread(target=self._up, args=(client, broker), daemon=True).start()
            threading.Thread(target=self._down, args=(broker, client), daemon=True).start()

    def _down(self, broker: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := broker.recv(65536):
                if not self.hold.is_set():
                    client.sendall(data)
        with contextlib.suppress(OSError):
            client.close()

    def _up(self, client: socket.socket, broker: socket.socket) -> None:
        buf = bytearray()
        version = 4
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                buf += data
                while (packet := self._take(buf)) is not None:
                    first, body = packet
                    kind = first >> 4
                    if kind == 1:  # CONNECT: protocol name, then its level (5: MQTT 5)
                        name_len = int.from_bytes(body[:2], "big")
                        version = body[2 + name_len]
                    elif kind == 3:
                        self._record(first, body, version)
                broker.sendall(data)
        with contextlib.suppress(OSError):
            broker.close()

    @staticmethod
    def _take(buf: bytearray) -> tuple[int, bytes] | None:
        """Pop one whole packet (first byte, body) off ``buf``; None until one is complete."""
        if not buf:
            return None
        got = _varint(buf, 1)
        if got is None:
            return None
        length, start = got
        if len(buf) < start + length:
            return None
        first, body = buf[0], bytes(buf[start : start + length])
        del buf[: start + length]
        return first, body

    def _record(self, first: int, body: bytes, version: int) -> None:
        qos, dup = (first >> 1) & 3, bool(first & 0x08)
        topic_len = int.from_bytes(body[:2], "big")
        pos = 2 + topic_len
        topic = body[2:pos].decode()
        mid = None
        if qos:
            mid = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2
        if version == 5:
            got = _varint(body, pos)
            assert got is not None
            props_len, pos = got
            pos += props_len
        with self._lock:
            self.publishes.append(Publish(topic, body[pos:], qos, dup, mid))
