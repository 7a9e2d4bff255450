"""MQTT publishing (paho-mqtt 2.x, MQTT 5 or 3.1.1) fed from the durable outbox.

The inference thread hands messages to ``submit`` (a bounded in-memory hand-off that never
blocks). One worker thread commits them to the outbox (one transaction per batch; a message
leaves the hand-off only once committed, so a stop while samples are being encoded loses
none: ``stop`` commits what is left), publishes
committed rows at QoS 1 while connected (review samples first, at most ``max_inflight`` at a
time) and deletes a row when its PUBACK arrives (``on_publish``). paho reconnects with
backoff.

One retransmission layer: the outbox. paho would re-send the QoS 1 messages it still holds
on every reconnect, and the worker re-publishes the same rows from the outbox (it must: after
a restart only the outbox has them), so every message in flight at a disconnect went twice.
At each CONNACK, before paho re-sends anything, ``_on_connect`` drops paho's copies of the
outbox's messages (``drop_out_messages``; status and command replies, which only paho holds,
are published again as they were) and starts a new connection epoch: rows in flight in an
older epoch are published again by the worker, once each (``republished`` counts them).

A PUBACK with a failure reason (MQTT 5: the broker's ACL answers 0x87 Not authorized) leaves
the row in the outbox and holds back its topic: its rows are sent again after a delay that
doubles from ``REFUSED_RETRY_MIN_S`` to ``REFUSED_RETRY_MAX_S`` while the broker keeps
refusing and resets once it accepts one. Refusals are counted (``publish_refused``, and one
``publish_refused_<reason>`` each) and reported in ``last_error``. MQTT 3.1.1 has no reason
codes: a broker refusing a publish acknowledges it as accepted, and the message is lost
there (use MQTT 5 with an ACL).

The device status is retained, with a Last Will saying ``offline``; telemetry goes out at
QoS 0 (latest wins). Commands arrive on ``<root>/cmd`` and are handed to the runtime.
With MQTT 5 the broker's Maximum Packet Size (from CONNACK) lowers the configured payload
limit; with MQTT 3.1.1 (``mqtt.protocol``) the broker's limit is unknown and the configured
``mqtt.max_payload_bytes`` alone bounds a message.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import DeviceConfig
from .outbox import Outbox, OutMessage
from .sampling import encode_sample
from .wire import dumps, status_message, topic

log = logging.getLogger("lineqc.edge.publisher")
PACKET_OVERHEAD = 512  # fixed header, topic, properties: kept free below the packet limit
HANDOFF_LIMIT = 4096  # messages waiting for the worker before new ones are counted as dropped
REFUSED_RETRY_MIN_S = 1.0  # a topic the broker refused: its rows wait this long, then
REFUSED_RETRY_MAX_S = 300.0  # twice as long each time it refuses again, up to this
COMMIT_BATCH = 512  # messages per outbox transaction
COMMIT_AFTER_S = 0.25  # encoding samples: commit what is encoded at least this often
UNSUPPORTED_PROTOCOL = 132  # CONNACK reason (MQTT 5), paho's reading of 3.1.1 return code 1


@dataclass
class PendingSample:
    """A review sample whose JPEG is encoded by the worker, off the inference thread."""

    doc: dict[str, Any]
    frame: np.ndarray
    quality: int


@dataclass
class Refusal:
    """A topic the broker refuses publishes on: its rows wait until ``until`` (monotonic)."""

    reason: str
    delay: float
    until: float


def read_password(cfg: DeviceConfig) -> str | None:
    if cfg.mqtt.password_file is not None:
        return cfg.mqtt.password_file.read_text().strip()
    return cfg.mqtt.password


class Publisher:
    def __init__(
        self,
        cfg: DeviceConfig,
        outbox: Outbox,
        on_command: Callable[[bytes], None] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.on_command = on_command
        self.status_fn = status
        self.root = cfg.topic_root
        self.connected = False
        self.broker_max_packet: int | None = None
        self._error: str | None = None  # see last_error
        self.counters: collections.Counter[str] = collections.Counter()
        self._handoff: collections.deque[tuple[str, str | None, Any]] = collections.deque()
        # The connection: ``connected``, the epoch and paho's copies of outbox rows change
        # together, under this lock (never taken in on_publish: paho holds its message lock).
        self._lock = threading.Lock()
        self._epoch = 0  # one per CONNACK: a row in flight in an older one is sent again
        self._inflight: dict[int, tuple[int, int, str]] = {}  # mid -> (row id, epoch, topic)
        self._acks: collections.deque[tuple[int, int, ReasonCode]] = collections.deque()
        self._sent: set[int] = set()  # rows this process published (a second time: counted)
        self._refused: dict[str, Refusal] = {}  # topics held back after a refused PUBACK
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._committing = threading.Lock()  # the worker's and stop's commits, one at a time
        self.client = self._make_client()

    # ---- paho --------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=mqtt.MQTTv5 if m.protocol == 5 else mqtt.MQTTv311,
        )
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(m.max_inflight)
        password = read_password(self.cfg)
        if m.username is not None or password is not None:
            client.username_pw_set(m.username or "", password)
        if m.tls is not None:
            client.tls_set(
                ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                keyfile=str(m.tls.key_file) if m.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(m.tls.insecure)
        will = status_message(device=self.cfg.device.id, state="offline", ts=0.0)
        client.will_set(topic(self.root, "status"), dumps(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            if reason.value == UNSUPPORTED_PROTOCOL and self.cfg.mqtt.protocol == 5:
                self.last_error += " (an MQTT 3.1.1 broker? set mqtt.protocol: 3.1.1)"
            self.counters["connect_refused"] += 1
            log.error("mqtt %s:%s: %s", self.cfg.mqtt.host, self.cfg.mqtt.port, self.last_error)
            return
        self.broker_max_packet = getattr(props, "MaximumPacketSize", None) if props else None
        with self._lock:
            # paho re-sends what it holds right after this callback: not the outbox's rows,
            # which the worker sends again itself (the epoch tells it which).
            dropped = client.drop_out_messages()
            ours = set(self._inflight)
            self._epoch += 1
            self.connected = True
        self.last_error = None
        log.info("mqtt connected to %s:%s", self.cfg.mqtt.host, self.cfg.mqtt.port)
        for msg in dropped:  # status, command replies: paho's alone, sent again once
            if msg.mid not in ours:
                client.publish(msg.topic, msg.payload, msg.qos, msg.retain, msg.properties)
        client.subscribe(topic(self.root, "cmd"), qos=1)
        self.publish_status()
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self.connected and self._accepting:
            log.warning("mqtt disconnected: %s", reason)
            self.counters["disconnects"] += 1
        self.connected = False  # what is in flight stays so until the next CONNACK
        if reason.is_failure and self._error is None:
            self.last_error = f"disconnected: {reason}"
        self._wake.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        # paho's thread, as _on_connect: the epoch read here is this PUBACK's connection's.
        self._acks.append((self._epoch, mid, reason))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            self.on_command(bytes(msg.payload))

    # ---- the public side -------------------------------------------------------------------

    @property
    def last_error(self) -> str | None:
        """The connection's or worker's last error, else the topics the broker refuses."""
        if self._error is not None:
            return self._error
        refused = list(self._refused.items())
        if not refused:
            return None
        (first, r), more = refused[0], len(refused) - 1
        return (
            f"the broker refuses publishing on {first}"
            + (f" and {more} more topic(s)" if more else "")
            + f": {r.reason} (check its ACL); the messages wait in the outbox and are tried "
            f"again with backoff"
        )

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._error = value

    @property
    def max_payload(self) -> int:
        limit = self.cfg.mqtt.max_payload_bytes
        if self.broker_max_packet:
            limit = min(limit, int(self.broker_max_packet) - PACKET_OVERHEAD)
        return max(limit, 256)

    def start(self) -> None:
        m = self.cfg.mqtt
        if m.protocol == 5:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=True)
        else:  # MQTT 3.1.1: a clean session is the client's default
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="lineqc-publisher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, key: str | None, item: bytes | PendingSample) -> bool:
        """Hand a result (bytes) or a sample to the worker; False (and counted) if refused."""
        if not self._accepting or len(self._handoff) >= HANDOFF_LIMIT:
            self.counters[f"handoff_dropped_{kind}"] += 1
            return False
        self._handoff.append((kind, key, item))
        self._wake.set()
        return True

    def publish_direct(
        self, kind: str, doc: dict[str, Any], qos: int = 0, retain: bool = False
    ) -> None:
        """Status and telemetry: not queued, sent only while connected (latest wins)."""
        if self.connected:
            self.client.publish(topic(self.root, kind), dumps(doc), qos=qos, retain=retain)

    def publish_status(self) -> None:
        if self.status_fn is not None:
            self.publish_direct("status", self.status_fn(), qos=1, retain=True)

    def stats(self) -> dict[str, Any]:
        return {
            **self.outbox.stats(),
            "inflight": len(self._inflight),
            "waiting": len(self._handoff),
            "connected": self.connected,
            "refused_topics": len(self._refused),
        }

    def stop(self, flush_s: float) -> bool:
        """Stop taking messages, commit what was handed over, publish for up to ``flush_s``.

        True when the outbox is empty at the end (everything acknowledged).
        """
        self._accepting = False
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline:
            if not self._handoff and self.outbox.depth == 0:
                break
            if not self.connected and not self._handoff and self.last_error:
                time.sleep(0.05)
            self._idle.clear()
            self._wake.set()
            self._idle.wait(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drain_handoff()  # anything the worker did not get to
        clean = self.outbox.depth == 0
        if self.connected and self.status_fn is not None:
            doc = self.status_fn()
            doc["state"] = "stopped"
            info = self.client.publish(topic(self.root, "status"), dumps(doc), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=1.0)
        self.client.disconnect()
        self.client.loop_stop()
        return clean

    # ---- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            try:
                self._commit_handoff()
                self._handle_acks()
                self._publish_pending()
            except Exception as exc:  # keep delivering; the error is reported
                self.last_error = f"publisher: {exc}"
                self.counters["publisher_errors"] += 1
                log.exception("publisher worker")
                time.sleep(0.2)
            if not self._handoff and not self._acks:
                self._idle.set()

    def _commit_handoff(self) -> None:
        """Commit the oldest handed-over messages, then take them off the hand-off: a
        message is always in one of the two (encoding samples takes time; a stop may come)."""
        with self._committing:
            batch: list[OutMessage] = []
            deadline = time.monotonic() + COMMIT_AFTER_S
            while len(batch) < min(len(self._handoff), COMMIT_BATCH):
                kind, key, item = self._handoff[len(batch)]  # only this thread pops
                batch.append(OutMessage(kind, topic(self.root, kind), self._payload(item), key))
                if time.monotonic() > deadline:
                    break
            if not batch:
                return
            for row_id in self.outbox.add_many(batch):
                if row_id < 0:
                    self.counters["outbox_refused"] += 1
            for _ in batch:
                self._handoff.popleft()
        if self._handoff:
            self._wake.set()

    def _payload(self, item: bytes | PendingSample) -> bytes:
        if not isinstance(item, PendingSample):
            return item
        payload, note = encode_sample(item.doc, item.frame, item.quality, self.max_payload)
        if note:
            self.counters[note] += 1
        return payload

    def _drain_handoff(self) -> None:
        """Commit everything still handed over (at stop); what cannot be is counted."""
        while self._handoff:
            try:
                self._commit_handoff()
            except Exception as exc:
                for kind, _, _ in self._handoff:
                    self.counters[f"handoff_dropped_{kind}"] += 1
                log.error(
                    "outbox: %d message(s) not committed at stop: %s", len(self._handoff), exc
                )
                self._handoff.clear()

    def _handle_acks(self) -> None:
        epoch = self._epoch  # read first: every PUBACK of an older connection is queued by now
        now = time.monotonic()
        done: list[int] = []
        while self._acks:
            ack_epoch, mid, reason = self._acks.popleft()
            with self._lock:
                entry = self._inflight.get(mid)
                if entry is not None and entry[1] == ack_epoch:
                    del self._inflight[mid]
                else:
                    entry = None
            if entry is None:  # status, telemetry or a command reply: paho's own
                if reason.is_failure:
                    self._count_refusal(reason)
                continue
            row, _, row_topic = entry
            if reason.is_failure:
                self._refused_publish(row_topic, reason, now)
            else:
                done.append(row)
                self._sent.discard(row)
                if self._refused.pop(row_topic, None) is not None:
                    log.info("mqtt: the broker accepts publishing on %s again", row_topic)
        with self._lock:  # paho's copies were dropped at the CONNACK: the worker sends again
            for mid in [m for m, (_, e, _) in self._inflight.items() if e < epoch]:
                del self._inflight[mid]
        if done:
            self.outbox.delete(done)
            self.counters["delivered"] += len(done)

    def _count_refusal(self, reason: ReasonCode) -> None:
        self.counters["publish_refused"] += 1
        name = re.sub(r"[^a-z0-9]+", "_", str(reason).lower()).strip("_") or str(reason.value)
        self.counters[f"publish_refused_{name}"] += 1

    def _refused_publish(self, row_topic: str, reason: ReasonCode, now: float) -> None:
        """A refused PUBACK: the row stays; its topic waits, longer each round refused."""
        self._count_refusal(reason)
        held = self._refused.get(row_topic)
        if held is None:
            held = Refusal(str(reason), REFUSED_RETRY_MIN_S, now + REFUSED_RETRY_MIN_S)
            self._refused[row_topic] = held
        elif now >= held.until:  # refused again after the wait: wait longer
            held.delay = min(held.delay * 2, REFUSED_RETRY_MAX_S)
            held.until = now + held.delay
            held.reason = str(reason)
        else:
            return  # another row of the round already set the wait
        log.warning(
            "mqtt: the broker refused a publish on %s: %s (check its ACL); its messages wait "
            "in the outbox, next try in %g s",
            row_topic,
            reason,
            held.delay,
        )

    def _publish_pending(self) -> None:
        room = self.cfg.mqtt.max_inflight - len(self._inflight)
        if not self.connected or room <= 0 or self.outbox.depth == 0:
            return
        now = time.monotonic()
        held = [t for t, r in self._refused.items() if now < r.until]
        busy = [row for row, _, _ in self._inflight.values()]
        rows = self.outbox.pending(room, exclude=busy, exclude_topics=held)
        if not rows:
            return
        payloads = [
            self._shrink(row.id, row.kind, row.payload)
            if len(row.payload) > self.max_payload
            else row.payload
            for row in rows
        ]
        with self._lock:
            for row, payload in zip(rows, payloads, strict=True):
                if not self.connected:
                    break
                info = self.client.publish(row.topic, payload, qos=row.qos)
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    break  # paho did not keep it (its queue is full): later
                # NO_CONN: paho keeps it for the next connection, which drops it at CONNACK
                self._inflight[info.mid] = (row.id, self._epoch, row.topic)
                if row.id in self._sent:
                    self.counters["republished"] += 1
                else:
                    self._sent.add(row.id)
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    break

    def _shrink(self, row_id: int, kind: str, payload: bytes) -> bytes:
        """A committed row over the (broker's) limit: drop its image, say so, keep the row."""
        doc = json.loads(payload)
        doc["image"] = None
        doc["image_error"] = (
            f"message of {len(payload)} bytes exceeds the broker's limit of {self.max_payload}"
        )
        self.counters["image_refused_oversized"] += 1
        return dumps(doc)
