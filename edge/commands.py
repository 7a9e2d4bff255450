"""Signed device commands: the fleet signs them, the device admits only fresh ones.

A command is JSON bytes signed with the fleet's Ed25519 key (``lineqc keys generate``; the
same signing as bundles, ``edge/signing.py``) and carried in a v2 envelope (``edge/wire.py``).
The device admits a command only when the signature verifies with its command key, the
command names this device (``<site>/<line>/<device>``), it was issued within
``commands.max_age_s`` of the device clock, and its ``seq`` is above every ``seq`` applied
before. That last counter is written to disk before the command is applied, so neither a
replay nor a restart can apply a command twice. Senders use microseconds since the epoch as
``seq``, so several senders need no shared counter.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineqc.atomic import atomic_write_text
from lineqc.errors import LineqcError

from .mqtt_login import MqttLogin
from .signing import sign, verify
from .wire import (
    AnyCommand,
    WireError,
    dumps,
    parse_command,
    parse_signed_command,
    signed_command,
)

log = logging.getLogger("lineqc.edge.commands")


class CommandRefused(LineqcError):
    """A command the device did not apply. ``reason`` is the telemetry counter's suffix
    (``commands_refused_<reason>``); the message is what the reply says, never a path."""

    def __init__(self, reason: str, message: str, cmd: AnyCommand | None = None) -> None:
        self.reason = reason
        self.cmd = cmd  # set once the signature verified: only then are its id and name echoed
        super().__init__(message)


class CommandGate:
    """The device side: admits a command payload or raises CommandRefused."""

    def __init__(self, key: Ed25519PublicKey, target: str, state: Path, max_age_s: float) -> None:
        self.key, self.target, self.state, self.max_age_s = key, target, Path(state), max_age_s
        self.last_seq, self.state_error = self._load()
        if self.state_error:
            log.error("%s; every command is refused until it is fixed or removed", self.state_error)

    def _load(self) -> tuple[int, str | None]:
        try:
            doc = json.loads(self.state.read_text())
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError) as exc:
            return 0, f"command counter {self.state} is unreadable ({exc})"
        seq = doc.get("last_seq") if isinstance(doc, dict) else None
        if type(seq) is not int or seq < 0:
            return 0, f"command counter {self.state} holds no last_seq"
        return seq, None

    def _store(self, seq: int) -> None:
        """Atomically: a crash leaves the old counter or the new one, never a torn file."""
        self.state.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.state, json.dumps({"last_seq": seq, "stored": round(time.time(), 3)})
        )
        self.last_seq = seq

    def admit(self, payload: bytes, now: float) -> AnyCommand:
        try:
            data, signature = parse_signed_command(payload)
        except WireError as exc:
            raise CommandRefused("unsigned", f"not a signed command: {exc}") from None
        if not verify(data, signature, self.key):
            raise CommandRefused(
                "bad_signature", "command signature does not verify with the device's key"
            )
        try:
            cmd = parse_command(data)
        except WireError as exc:
            raise CommandRefused("invalid", str(exc)) from None
        if cmd.target != self.target:
            raise CommandRefused("wrong_device", f"command is for {cmd.target}", cmd)
        # A deploy is desired state, retained for a device that was away: no age window.
        if self.max_age_s and cmd.cmd != "deploy" and abs(now - cmd.ts) > self.max_age_s:
            raise CommandRefused(
                "stale",
                f"command issued {now - cmd.ts:+.0f} s from the device clock (window "
                f"{self.max_age_s:g} s)",
                cmd,
            )
        if self.state_error:
            raise CommandRefused("state", "the device's command counter is unreadable", cmd)
        if cmd.seq <= self.last_seq:
            raise CommandRefused(
                "replayed", f"command seq {cmd.seq} is not above the last applied", cmd
            )
        try:
            self._store(cmd.seq)  # before applying: what is applied is never admitted again
        except OSError as exc:
            log.error("cannot store the command counter in %s: %s", self.state, exc)
            raise CommandRefused(
                "state", "the device cannot store its command counter", cmd
            ) from None
        return cmd


# ---- the sender's side -----------------------------------------------------------------------


def new_command(
    cmd: str, target: str, cmd_id: str | None = None, seq: int | None = None, **fields: Any
) -> dict[str, Any]:
    """A command document; ``seq`` defaults to microseconds since the epoch."""
    doc: dict[str, Any] = {"cmd": cmd, "id": cmd_id, "target": target}
    doc["seq"] = seq or time.time_ns() // 1000
    doc["ts"] = round(time.time(), 6)
    doc.update({k: v for k, v in fields.items() if v is not None})
    parse_command(dumps(doc))  # refuse to sign what the device would refuse as malformed
    return doc


def sign_command(doc: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The envelope payload to publish on the device's ``cmd`` topic."""
    data = dumps(doc)
    return dumps(signed_command(data, sign(data, key)))


def send_command(
    login: MqttLogin,
    root: str,
    payload: bytes,
    cmd_id: str,
    timeout: float,
) -> dict[str, Any] | None:
    """Publish a signed command on ``<root>/cmd`` (QoS 1) and wait for the device's reply
    with ``cmd_id``; None when none came within ``timeout`` seconds. LineqcError when the
    broker cannot be reached, refuses the login, or refuses the subscription to the replies
    or the command itself (an ACL that does not grant this login those topics)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    reply: dict[str, Any] = {}
    refused: list[str] = []
    done, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login.apply(client)
    host, port = login.broker.host, login.broker.port
    who = login.username or (f"the certificate {login.tls_cert}" if login.tls_cert else "us")

    def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            reply["connect_error"] = str(rc)
            done.set()
        else:
            c.subscribe(f"{root}/cmd/reply", qos=1)

    def on_message(c: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == cmd_id:
            reply.update(doc)
            done.set()

    def on_subscribe(c: mqtt.Client, ud: Any, mid: int, codes: list[Any], props: Any) -> None:
        refused.extend(str(rc) for rc in codes if rc.is_failure)
        subscribed.set()

    def on_publish(c: mqtt.Client, ud: Any, mid: int, rc: Any, props: Any) -> None:
        if rc.is_failure:  # MQTT 5: PUBACK 0x87 (Not authorized) from the broker's ACL
            refused.append(str(rc))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:  # ssl.SSLError included: a certificate the broker or we refuse
        raise LineqcError(f"cannot reach the broker at {login.broker} ({exc})") from None
    client.loop_start()
    try:
        if not subscribed.wait(timeout) and not done.is_set():
            return None
        if "connect_error" in reply:
            raise LineqcError(
                f"broker {login.broker} refused the connection: {reply['connect_error']}"
            )
        if refused:
            raise LineqcError(
                f"not sent: broker {login.broker} refuses {who} reading {root}/cmd/reply "
                f"({refused[0]})"
            )
        client.publish(f"{root}/cmd", payload, qos=1).wait_for_publish(timeout)
        if refused:
            raise LineqcError(
                f"broker {login.broker} refuses {who} publishing on {root}/cmd "
                f"({refused[0]}): its ACL does not let this login send commands"
            )
        return reply if done.wait(timeout) else None
    finally:
        client.disconnect()
        client.loop_stop()
