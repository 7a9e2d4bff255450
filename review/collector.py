"""`lineqc review collect`: the devices' review samples, from MQTT into the review store.

One MQTT 5 client with a persistent session (clean start off, a session expiry of days)
under ``--client-id``, subscribed at QoS 1 to ``$share/<group>/<topic>``: collectors in one
group split the messages (``--group ''``: the plain topic, for a single collector). Each
message is validated against the wire format and stored by ``frame_id``, and only then
acknowledged: paho runs with ``manual_ack``, so a PUBACK leaves after the commit. Messages
are stored in batches: up to ``--batch`` of them (or what arrived in ``--batch-wait``
seconds), the samples' image files written and fsynced together, then their rows in one
transaction, then every message of the batch acknowledged; a failed commit leaves the whole
batch unacknowledged, and the broker sends it again. A collector killed at any point
leaves the broker holding every message it had not acknowledged, and the broker sends
them again when the same client id comes back; what was committed but not yet
acknowledged arrives twice and is counted as a duplicate. A malformed message is logged,
recorded as a reject (without its payload) and acknowledged with its batch: sending it
again would not make it valid.

When the store fails (database down, disk full) the batch is not acknowledged: the
collector drops the connection, so the broker keeps it in the session, waits until the
database answers again and reconnects, and the broker sends it again.

Fleet monitoring (``monitor.py``; off with ``--no-monitor``): the collector also reads the
``result``, ``telemetry`` and ``status`` topics beside ``sample`` and keeps them as rollups,
summed in memory and committed with the batch they arrived in.
Every ``evaluate_every_s`` the monitor judges the cameras and publishes each alarm that
changed state on ``<prefix>/<site>/<line>/<device>/alert`` (QoS 1).

What Mosquitto 2.0 does with shared subscriptions (seen with 2.0.11):
  * unacknowledged QoS 1 messages of a persistent session are sent again (DUP set) when the
    same client id reconnects, shared subscription or not: kill -9 loses nothing;
  * it keeps dealing a group's messages round-robin to a member whose session persists while
    it is offline: they wait in that session (up to the broker's ``max_queued_messages``,
    1000 by default, then dropped) for that client id; the other members do not get them.
    Keep a group's client ids stable and ``max_queued_messages`` above the longest outage;
    a collector retired for good strands its share when its session expires;
  * ``persistence true`` keeps sessions and their queued messages over a broker restart, but
    not shared subscriptions (persist__subs_save skips them): until a collector reconnects
    and subscribes again, samples the devices publish match nothing, are acknowledged to the
    device and dropped. A plain subscription is persisted, so ``--group ''`` (one collector,
    no sharing) is the setup that survives a Mosquitto restart with nothing lost; with a
    group, the reconnect backoff is kept short to keep that window small.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import signal
import struct
import time
from types import FrameType
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import String, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError

from lineqc.edge.defect_map import decode_png
from lineqc.edge.imagesize import ImageSizeError, bounded_size
from lineqc.edge.mqtt_login import BrokerUrl, MqttLogin
from lineqc.edge.wire import (
    Alert,
    DefectMapImage,
    Result,
    Sample,
    SampleImage,
    Status,
    TelemetryMessage,
    WireError,
    dumps,
    is_frame_id,
    is_id,
    parse_message,
    topic_ids,
)
from lineqc.errors import LineqcError

from . import logs
from .monitor import Monitor, Rollups, load_config
from .store import Frame, Outcome, Store

log = logging.getLogger("lineqc.review.collector")

SESSION_EXPIRY_S = 7 * 24 * 3600  # how long the broker keeps our messages while we are away
KEEPALIVE_S = 30
TICK_S = 0.2  # longest wait in the network loop: how soon a signal or --exit-idle is noticed
RETRY_MIN_S = 0.5  # backoff for an unreachable broker and for a failing store
RETRY_MAX_S = 5.0  # short: a broker restart forgets shared subscriptions (see above)
SUMMARY_EVERY_S = 60.0
INT_MAX = 2**63 - 1  # seq is a BIGINT; image sizes fit in the same check
FIELD_COLUMN = {"label": "predicted"}  # wire field -> frames column, where the names differ
MAP_MAX_SIDE = 1024  # a defect map's largest side, as the wire model bounds it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TS_MIN = 946_684_800.0  # 2000-01-01: a capture time before it is a device clock never set
TS_AHEAD_S = 86_400.0  # a capture time more than a day ahead of ours is a wrong clock
MONITOR_KINDS = ("result", "telemetry", "status")  # read beside sample for fleet monitoring


# ---- validation ---------------------------------------------------------------------------

# The frames columns with a length limit, read from the table so the limits live in one place.
_LENGTHS = {
    c.name: int(c.type.length)
    for c in Frame.__table__.columns
    if isinstance(c.type, String) and c.type.length
}


def decode_sample(payload: bytes, now: float | None = None) -> tuple[Sample, str | None]:
    """A wire ``sample`` that the store can take whole and every page can show, and why its
    defect map was dropped (None: it had a valid one, or none); WireError naming what is
    wrong with the sample.

    Beyond the wire model: ids as WIRE.md documents them, a capture time in a sane range
    (``now``: the time to judge it by), probabilities that fit the classes, an image that is
    strict base64 of a JPEG of the stated size (read from its header before it is decoded),
    and values every database accepts (PostgreSQL refuses what SQLite would take: long
    strings, NUL characters, NaN in JSON, 64-bit integers). A message the database refuses
    would otherwise come back from the broker forever, and one a page cannot show would
    break that page for every inspector. A malformed defect map costs only the map: the
    frame is worth reviewing without it.
    """
    msg, map_problem = _parse_sample(payload)
    for name, value in msg.model_dump(exclude={"image", "defect_map"}).items():
        if isinstance(value, str):
            _check_text(name, value, _LENGTHS.get(FIELD_COLUMN.get(name, name)))
        elif isinstance(value, int) and not -INT_MAX <= value <= INT_MAX:
            raise WireError(f"{name}: {value} is out of range")
    for cls in msg.classes:
        _check_text("classes", cls, None)
    if not all(math.isfinite(x) for x in (msg.ts, msg.confidence, *msg.probabilities)):
        raise WireError("ts, confidence, probabilities: not finite numbers")
    _check_ids(msg)
    _check_time(msg.ts, time.time() if now is None else now)
    _check_model_view(msg)
    if msg.image is not None:
        _check_jpeg(msg.image)
    if msg.defect_map is not None:
        try:
            _check_defect_map(msg.defect_map)
        except WireError as exc:
            msg, map_problem = msg.model_copy(update={"defect_map": None}), str(exc)
    return msg, map_problem


def decode_monitored(payload: bytes, kind: str) -> Result | TelemetryMessage | Status:
    """A ``result``, ``telemetry`` or ``status`` message (as its topic's ``kind`` says) with
    values the rollups can take; WireError naming what is wrong."""
    msg = parse_message(payload)
    if msg.type != kind:
        raise WireError(f"message: type {msg.type!r} on a {kind} topic")
    assert isinstance(msg, Result | TelemetryMessage | Status)
    _check_text("device", msg.device, _LENGTHS["device"])
    if isinstance(msg, Result):
        _check_text("model_version", msg.model_version, _LENGTHS["model_version"])
        if not (is_id(msg.camera) and is_frame_id(msg.frame_id, msg.device, msg.camera)):
            raise WireError(
                f"frame_id: {msg.frame_id[:100]!r} is not <device>-<camera>-<run>-<seq>"
            )
        if not math.isfinite(msg.latency_ms):
            raise WireError("latency_ms: not a finite number")
    if isinstance(msg, Status) and msg.model_version is not None:
        _check_text("model_version", msg.model_version, _LENGTHS["model_version"])
    _check_time(msg.ts, time.time())
    return msg


def _check_ids(msg: Sample) -> None:
    for name in ("site", "line", "device", "camera"):
        if not is_id(getattr(msg, name)):
            raise WireError(f"{name}: {getattr(msg, name)[:100]!r} is not an id (see WIRE.md)")
    if not is_frame_id(msg.frame_id, msg.device, msg.camera):
        raise WireError(
            f"frame_id: {msg.frame_id[:100]!r} is not {msg.device}-{msg.camera}-<run>-<seq>"
        )


def _check_time(ts: float, now: float) -> None:
    if not TS_MIN <= ts <= now + TS_AHEAD_S:
        raise WireError(
            f"ts: {ts!r} is not a capture time (before 2000, or over a day ahead of ours)"
        )


def _check_model_view(msg: Sample) -> None:
    """Classes, probabilities, label and confidence the frame page can show as they are."""
    if not msg.classes or len(set(msg.classes)) != len(msg.classes):
        raise WireError("classes: empty or repeated")
    if len(msg.probabilities) != len(msg.classes):
        raise WireError(f"probabilities: {len(msg.probabilities)} for {len(msg.classes)} classes")
    if not all(0.0 <= p <= 1.0 for p in (msg.confidence, *msg.probabilities)):
        raise WireError("confidence, probabilities: outside 0..1")
    if msg.label not in msg.classes:
        raise WireError(f"label: {msg.label[:100]!r} is not one of the classes")


def _parse_sample(payload: bytes) -> tuple[Sample, str | None]:
    """The sample, parsed again without its defect map when the map alone breaks the wire
    model (then with the model's complaint about it)."""
    try:
        msg, map_problem = parse_message(payload), None
    except WireError as exc:
        stripped = _without_defect_map(payload)
        if stripped is None:
            raise
        msg, map_problem = parse_message(stripped), str(exc)
    if not isinstance(msg, Sample):
        raise WireError(f"message: type {msg.type!r} is not a sample")
    return msg, map_problem


def _without_defect_map(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict) or doc.get("defect_map") is None:
        return None
    del doc["defect_map"]
    return json.dumps(doc)


def _check_text(name: str, value: str, limit: int | None) -> None:
    if "\x00" in value:
        raise WireError(f"{name}: contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        raise WireError(f"{name}: not valid Unicode") from None
    if limit is not None and len(value) > limit:
        raise WireError(f"{name}: longer than {limit} characters")


def _check_jpeg(image: SampleImage) -> None:
    if not math.isfinite(image.scale):
        raise WireError("image.scale: not a finite number")
    try:  # the model's jpeg_bytes() skips stray characters; a reader must not guess
        data = base64.b64decode(image.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"image.data: not base64 ({exc})") from None
    if data[:3] != b"\xff\xd8\xff":  # cv2 also decodes PNG, BMP...: insist on a JPEG
        raise WireError(f"image.data: {len(data)} bytes that are not a readable JPEG")
    try:  # from the header: a decompression bomb is refused before it is decoded
        width, height = bounded_size(data)
    except ImageSizeError as exc:
        raise WireError(f"image.data: {exc}") from None
    if (width, height) != (image.width, image.height):
        raise WireError(
            f"image: the JPEG is {width}x{height}, the message says {image.width}x{image.height}"
        )
    frame = None
    with contextlib.suppress(cv2.error):
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if frame is None or frame.shape[:2] != (height, width):
        raise WireError(f"image.data: {len(data)} bytes that are not a readable JPEG")


def _check_defect_map(defect_map: DefectMapImage) -> None:
    try:
        data = base64.b64decode(defect_map.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"defect_map.data: not base64 ({exc})") from None
    width, height = _grey_png_size(data)  # from the header: nothing decoded yet
    if (width, height) != (defect_map.width, defect_map.height):
        raise WireError(
            f"defect_map: the PNG is {width}x{height}, "
            f"the message says {defect_map.width}x{defect_map.height}"
        )
    try:
        cells = decode_png(data)
    except (ValueError, cv2.error):
        cells = None
    if cells is None or cells.shape != (height, width):
        raise WireError(f"defect_map.data: {len(data)} bytes that are not a readable PNG")


def _grey_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, which must say 8-bit grey of at most
    MAP_MAX_SIDE a side (so a decompression bomb is refused before it is decoded)."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise WireError(f"defect_map.data: {len(data)} bytes that are not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if (depth, colour) != (8, 0):
        raise WireError(
            f"defect_map: not an 8-bit grey PNG (bit depth {depth}, colour type {colour})"
        )
    if not (1 <= width <= MAP_MAX_SIDE and 1 <= height <= MAP_MAX_SIDE):
        raise WireError(f"defect_map: the PNG is {width}x{height}, over {MAP_MAX_SIDE} a side")
    return width, height


# ---- the collector ------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    store_errors: int = 0
    maps_dropped: int = 0  # frames stored without their malformed defect map
    conflicts: int = 0  # a stored frame id again, with other content: the first one kept
    monitored: int = 0  # result, telemetry and status messages committed into rollups
    alerts: int = 0  # alarm changes published

    def line(self) -> str:
        line = (
            f"stored {self.stored}, duplicates {self.duplicates}, rejected {self.rejected}, "
            f"store errors {self.store_errors}"
        )
        # Only when they happened: the line stays as scripts know it otherwise.
        if self.maps_dropped:
            line += f", defect maps dropped {self.maps_dropped}"
        line += f", conflicts {self.conflicts}" if self.conflicts else ""
        line += f", monitored {self.monitored}" if self.monitored else ""
        return line + (f", alerts {self.alerts}" if self.alerts else "")


def identity_problem(topic: str, sample: Sample) -> str | None:
    """Why the sample may not come from the device its topic names (None: it may).

    The topic is what the broker's ACL (and a TLS identity) binds to a device; the ids in the
    payload are only what the sender wrote. A sample claiming another device's site, line or
    id would otherwise be stored under that device's frame ids."""
    ids = topic_ids(topic, "sample")
    if ids is None:
        return f"topic {topic[:300]!r} is not <prefix>/<site>/<line>/<device>/sample"
    claimed = (sample.site, sample.line, sample.device)
    if claimed != ids:
        return f"identity mismatch: the message says {'/'.join(claimed)}, its topic {'/'.join(ids)}"
    return None


class Collector:
    def __init__(
        self,
        store: Store,
        broker: BrokerUrl,
        *,
        topic: str,
        group: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        exit_idle: float | None = None,
        monitor: Monitor | None = None,
        batch: int = 500,
        batch_wait_s: float = 0.2,
    ) -> None:
        self.store = store
        self.broker = broker
        self.subscription = f"$share/{group}/{topic}" if group else topic
        self.subscriptions = [self.subscription]
        self.monitor = monitor
        self.batch, self.batch_wait_s = batch, batch_wait_s
        if monitor is not None:
            if self.subscription.endswith("/sample"):  # the same filter for the other kinds
                base = self.subscription.removesuffix("/sample")
                self.subscriptions += [f"{base}/{kind}" for kind in MONITOR_KINDS]
            self.rollups = Rollups(monitor.config.bucket_s)
        # The batch not committed yet: every message's (mid, qos) and the samples' (topic,
        # payload); the rest of its messages went into the rollups.
        self.unacked: list[tuple[int, int]] = []
        self.samples: list[tuple[str, bytes]] = []
        self.batch_started = 0.0
        self.alert_roots: dict[str, str] = {}  # device -> its topic root (for its alerts)
        self.next_evaluation = 0.0
        self.client_id = client_id
        self.exit_idle = exit_idle
        self.counts = Counts()
        self.stopping = False
        self.store_error: str | None = None  # set by on_message: drop the connection, retry
        self.fatal: str | None = None  # set by on_subscribe: the broker refused us
        self.last_activity = time.monotonic()
        self.login = MqttLogin(broker, username, password, tls_ca, tls_cert, tls_key)
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,  # PUBACK only once the frame is committed
        )
        self.login.apply(client)  # user, password, TLS with the client certificate
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        # unacknowledged at once: a batch must fit in flight
        props.ReceiveMaximum = min(65535, max(self.batch, 20))
        # Only records the address; run() connects (and reconnects) itself.
        client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        return client

    # ---- paho callbacks (all run inside client.loop(), on the main thread) ----------------

    def _on_connect(
        self, client: mqtt.Client, _: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.broker, reason)
            return
        log.info(
            "connected to %s as %r (session present: %s)",
            self.broker,
            self.client_id,
            "yes" if flags.session_present else "no",
        )
        # Also when the session is present: a broker restarted without persistence forgot it.
        client.subscribe([(sub, SubscribeOptions(qos=1)) for sub in self.subscriptions])

    def _on_disconnect(
        self, client: mqtt.Client, _: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        (log.warning if reason.is_failure else log.info)(
            "disconnected from %s: %s", self.broker, reason
        )

    def _on_subscribe(
        self, client: mqtt.Client, _: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self.fatal = f"broker {self.broker} refused the subscription to {self.subscription}: "
            self.fatal += ", ".join(str(r) for r in refused)
            if self.subscription.startswith("$share/"):
                self.fatal += " (--group '' subscribes without sharing)"
        else:
            log.info("subscribed to %s (QoS %d)", ", ".join(self.subscriptions), reasons[0].value)
            self.last_activity = time.monotonic()  # --exit-idle counts from here

    def _on_message(self, client: mqtt.Client, _: Any, msg: mqtt.MQTTMessage) -> None:
        self.last_activity = time.monotonic()
        if self.store_error is not None:
            return  # not acknowledged: the broker sends it again after the reconnect
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind == "alert":  # our own (a wide --topic filter reaches them)
            client.ack(msg.mid, msg.qos)
            return
        if self.monitor is not None and kind in MONITOR_KINDS:
            self._monitor_message(msg)
            return
        self.samples.append((msg.topic, bytes(msg.payload)))
        self._join_batch(msg)

    def _join_batch(self, msg: mqtt.MQTTMessage) -> None:
        """The message waits for its batch's commit to be acknowledged."""
        if not self.unacked:
            self.batch_started = time.monotonic()
        self.unacked.append((msg.mid, msg.qos))
        if len(self.unacked) >= self.batch:
            self._commit_batch()

    def _checked(self, topic: str, payload: bytes) -> tuple[Sample, str | None] | None:
        """The sample and why its defect map was dropped; None when it is rejected (raises
        only when recording the reject fails)."""
        try:
            sample, map_problem = decode_sample(payload)
        except Exception as exc:  # whatever a payload makes the parser raise is its own fault
            reason = str(exc) if isinstance(exc, WireError) else f"unparseable: {exc!r}"
            self._reject(topic, payload, reason)
            return None
        problem = identity_problem(topic, sample)
        if problem is not None:
            self._reject(topic, payload, problem)
            return None
        return sample, map_problem

    def _store_samples(self) -> None:
        """Store the batch's samples: each checked alone (a bad one is a counted reject),
        the good ones written together (their files, then one commit); raises only when the
        store fails."""
        good = [
            (topic, payload, *checked)
            for topic, payload in self.samples
            if (checked := self._checked(topic, payload)) is not None
        ]
        try:
            outcomes: list[Outcome | None] = list(self.store.add_samples([g[2] for g in good]))
        except DataError:  # a value this database refuses: find it, one by one
            outcomes = [
                self._add_alone(topic, payload, sample) for topic, payload, sample, _ in good
            ]
        for (topic, payload, sample, map_problem), outcome in zip(good, outcomes, strict=True):
            if outcome is Outcome.DUPLICATE:
                self.counts.duplicates += 1
            elif outcome is Outcome.CONFLICT:
                self._conflict(topic, payload, sample)
            elif outcome is Outcome.STORED:
                self._stored(topic, sample, map_problem)

    def _add_alone(self, topic: str, payload: bytes, sample: Sample) -> Outcome | None:
        try:
            return self.store.add_sample(sample)
        except DataError as exc:  # a value this database refuses; it would never go in
            self._reject(topic, payload, f"the database refused it: {exc.orig}")
            return None

    # ---- fleet monitoring: batched into rollups ------------------------------------------

    def _monitor_message(self, msg: mqtt.MQTTMessage) -> None:
        """Add one result, telemetry or status to the batch (acknowledged at its commit);
        a malformed one is recorded as a reject and acknowledged at once."""
        kind = msg.topic.rsplit("/", 1)[-1]
        payload = bytes(msg.payload)
        if not payload and kind == "status":  # a retained status cleared: nothing to count
            self.client.ack(msg.mid, msg.qos)
            return
        try:
            doc = decode_monitored(payload, kind)
            ids = topic_ids(msg.topic, kind)
            if ids is None or ids[2] != doc.device:
                raise WireError(
                    f"identity mismatch: the message says device {doc.device[:100]!r}, "
                    f"its topic is {msg.topic[:300]!r}"
                )
        except Exception as exc:
            reason = str(exc) if isinstance(exc, WireError) else f"unparseable: {exc!r}"
            try:
                self._reject(msg.topic, payload, reason)
            except Exception as store_exc:
                self._store_failed(store_exc)
                return
            self.client.ack(msg.mid, msg.qos)
            return
        site, line, device = ids
        self.alert_roots[device] = msg.topic.rsplit("/", 1)[0]
        if isinstance(doc, Result):
            self.rollups.add_result(site, line, doc)  # a redelivery is not counted again
        elif isinstance(doc, TelemetryMessage):
            self.rollups.add_telemetry(site, line, doc)
        else:
            self.rollups.add_status(site, line, doc)
        self._join_batch(msg)

    def _commit_batch(self) -> None:
        """Store the batch's samples and commit its rollups, then acknowledge its messages."""
        if not self.unacked:
            return
        try:
            self._store_samples()
            if self.monitor is not None:
                self.rollups.flush(self.store)
        except Exception as exc:  # not acknowledged: the broker sends them all again
            if self.monitor is not None:
                self.rollups.discard()
            self._store_failed(exc)
        else:
            for mid, qos in self.unacked:
                self.client.ack(mid, qos)
            self.counts.monitored += len(self.unacked) - len(self.samples)
        self.unacked.clear()
        self.samples.clear()
        self.last_activity = time.monotonic()  # a long commit is work, not idleness

    def _store_failed(self, exc: Exception) -> None:
        self.counts.store_errors += 1
        self.store_error = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def _evaluate(self) -> None:
        """Judge the cameras; publish each alarm that changed state on its alert topic."""
        assert self.monitor is not None
        try:
            alerts = self.monitor.evaluate(self.store)
        except Exception as exc:
            self._store_failed(exc)
            return
        for alert in alerts:
            self._publish_alert(alert)

    def _publish_alert(self, alert: Alert) -> None:
        root = self.alert_roots.get(
            alert.device, f"lineqc/v1/{alert.site}/{alert.line}/{alert.device}"
        )
        (log.warning if alert.state == "firing" else log.info)(
            "alarm %s %s on %s/%s/%s camera %s: %s",
            alert.alarm, alert.state, alert.site, alert.line, alert.device, alert.camera,
            alert.detail,
        )  # fmt: skip
        self.client.publish(f"{root}/alert", dumps(alert.model_dump()), qos=1)
        self.counts.alerts += 1

    def _stored(self, topic: str, sample: Sample, map_problem: str | None) -> None:
        self.counts.stored += 1
        if map_problem is not None:  # counted once, with the frame it came with
            self.counts.maps_dropped += 1
            log.warning(
                "stored frame %s from %s without its defect map: %s",
                sample.frame_id,
                topic,
                map_problem,
            )

    def _conflict(self, topic: str, payload: bytes, sample: Sample) -> None:
        """A frame id stored before, with other content: never silently dropped."""
        reason = f"frame {sample.frame_id}: already stored with other content (the first kept)"
        self.store.add_reject(topic, reason, len(payload))
        self.counts.conflicts += 1
        log.warning("conflicting duplicate on %s: %s", topic, reason)

    def _reject(self, topic: str, payload: bytes, reason: str) -> None:
        # The reason may quote the payload: make it text every database takes.
        reason = reason.encode("utf-8", "backslashreplace").decode()[:2000]
        reason = reason.replace("\x00", "\\x00")
        self.store.add_reject(topic, reason, len(payload))
        self.counts.rejected += 1
        log.warning("rejected a message on %s (%d bytes): %s", topic, len(payload), reason)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Collect until SIGTERM/SIGINT or --exit-idle; 0 on a clean stop."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        retry = RetryDelay()
        next_connect = 0.0  # when to (re)connect while no socket is open
        connected_socket = False
        last_summary, summarized = time.monotonic(), Counts()
        try:
            while not self.stopping:
                now = time.monotonic()
                if self.fatal is not None:
                    raise LineqcError(self.fatal)
                if self.store_error is not None:
                    self._wait_for_store()
                    connected_socket = False
                    retry.reset()
                    next_connect = 0.0
                    continue
                if self._idle_for(now):
                    log.info("no message for %g s (--exit-idle): stopping", self.exit_idle)
                    break
                if now - last_summary >= SUMMARY_EVERY_S:
                    if self.counts != summarized:
                        log.info("collector: %s", self.counts.line())
                        summarized = dataclasses.replace(self.counts)
                    last_summary = now
                if not connected_socket:
                    if now < next_connect:
                        time.sleep(min(TICK_S, next_connect - now))
                        continue
                    try:
                        self.client.reconnect()
                        connected_socket = True
                    except OSError as exc:  # refused, unreachable, name, TLS handshake
                        delay = retry.next()
                        log.warning("broker %s: %s; retrying in %.1f s", self.broker, exc, delay)
                        next_connect = now + delay
                    continue
                rc = self.client.loop(TICK_S)
                self._tick(time.monotonic())
                if self.client.is_connected():
                    retry.reset()
                elif rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    connected_socket = False
                    next_connect = time.monotonic() + retry.next()
            if self.store_error is None and self.client.is_connected():
                self._commit_batch()  # what is committed is acknowledged before we leave
                if self.monitor is not None:
                    self._evaluate()
                self.client.loop(TICK_S)  # the acknowledgements and alerts go out
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._drop_connection()
        return 0

    def _tick(self, now: float) -> None:
        if self.unacked and now - self.batch_started >= self.batch_wait_s:
            self._commit_batch()
        if self.monitor is None:
            return
        if now >= self.next_evaluation and self.store_error is None and self.client.is_connected():
            self.next_evaluation = now + self.monitor.config.evaluate_every_s
            self._evaluate()

    def _stop(self, signum: int, _: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early for a signal."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(TICK_S, max(0.0, deadline - time.monotonic())))

    def _idle_for(self, now: float) -> bool:
        return self.exit_idle is not None and now - self.last_activity >= self.exit_idle

    def _drop_connection(self) -> None:
        """DISCONNECT (written at once; paho closes the socket): the session stays."""
        if self.client.is_connected():
            self.client.disconnect()

    def _wait_for_store(self) -> None:
        """Disconnect, back off until the database answers again (or a signal), clear."""
        log.error(
            "review store failed (%s): disconnecting; the broker keeps the unacknowledged "
            "message(s) and sends them again once the store is back",
            self.store_error,
        )
        self._drop_connection()
        retry = RetryDelay()
        while not self.stopping:
            self._sleep(retry.next())
            try:
                with self.store.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception as exc:
                log.warning("review store still failing: %s", str(exc).splitlines()[0])
                continue
            log.info("review store is back: reconnecting")
            break
        self.store_error = None
        self.last_activity = time.monotonic()  # --exit-idle counts from here


class RetryDelay:
    """Doubling delays from RETRY_MIN_S up to RETRY_MAX_S."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.delay = RETRY_MIN_S

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, RETRY_MAX_S)
        return delay


def _check_args(args: argparse.Namespace) -> None:
    if not args.client_id:
        raise LineqcError("--client-id: must not be empty (the broker keeps our session under it)")
    if any(c in args.group for c in "/+#"):
        raise LineqcError(f"--group {args.group!r}: must be a name without '/', '+' or '#'")
    if not args.topic or args.topic.startswith("$share/"):
        raise LineqcError(f"--topic {args.topic!r}: give the plain topic filter (see --group)")
    if args.exit_idle is not None and args.exit_idle <= 0:
        raise LineqcError(f"--exit-idle {args.exit_idle}: must be more than 0 seconds")
    if args.batch < 1:
        raise LineqcError(f"--batch {args.batch}: must be 1 or more messages")
    if not args.batch_wait >= 0:
        raise LineqcError(f"--batch-wait {args.batch_wait}: must be 0 or more seconds")


def run_collector(args: argparse.Namespace) -> int:
    logs.configure()
    login = MqttLogin.from_args(args)  # the broker, the TLS files, the password file
    _check_args(args)
    store = Store(args.db, args.images)
    try:
        collector = Collector(
            store,
            login.broker,
            topic=args.topic,
            group=args.group,
            client_id=args.client_id,
            username=login.username,
            password=login.password,
            tls_ca=login.tls_ca,
            tls_cert=login.tls_cert,
            tls_key=login.tls_key,
            exit_idle=args.exit_idle,
            monitor=None if args.no_monitor else Monitor(load_config(args.monitor_config)),
            batch=args.batch,
            batch_wait_s=args.batch_wait,
        )
        where = make_url(store.url)  # str() hides a password
        log.info("collecting %s from %s into %s", ", ".join(collector.subscriptions), login, where)
        code = collector.run()
    finally:
        store.close()
    log.info("collector: %s", collector.counts.line())
    print(collector.counts.line(), flush=True)
    return code
