"""`lineqc fleet`: the server side of rollouts (edge/rollout.py is the device's).

``publish`` verifies a signed bundle and copies its tar into an artifact store, a folder
named by content: ``<store>/<sha256>.tar`` plus ``index.json`` (version -> sha256, size).
Any static HTTP server (with Range, for resumed downloads) can serve that folder.
``deploy`` signs one ``deploy`` command per selected device (edge/WIRE.md) and publishes it
retained, QoS 1, on the device's ``cmd`` topic, so a device that is away gets it when it
reconnects. ``status`` prints each device's rollout from the retained status messages.
``watch`` keeps the fleet table of the review store (``fleet_devices``, and every step in
``fleet_events``) from the devices' status and command replies; ``deploy --db`` records what
it sent there too. The web app shows the table to admins (``fleet_page.py``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineqc.edge.bundle import BundleError, load_bundle, pack_tar, sha256_file
from lineqc.edge.commands import new_command, sign_command
from lineqc.edge.mqtt_login import MqttLogin, add_login_args
from lineqc.edge.signing import load_private_key
from lineqc.edge.wire import is_id, topic_ids
from lineqc.errors import LineqcError

if TYPE_CHECKING:
    from .store import Store

INDEX = "index.json"


def read_index(store: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads((store / INDEX).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LineqcError(f"{store / INDEX}: unreadable ({exc})") from None
    return dict(doc)


def publish(bundle: Path, store: Path, public_key: Path) -> dict[str, Any]:
    """Verify ``bundle`` (folder or tar), store its tar by sha256; returns its index entry."""
    try:
        verified = load_bundle(bundle, public_key)
    except BundleError as exc:
        raise LineqcError(f"not published: {exc}") from None
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store) as tmp:
        tar = Path(tmp) / "bundle.tar"
        if bundle.is_dir():
            pack_tar(bundle, tar)
        else:
            shutil.copyfile(bundle, tar)
        sha = sha256_file(tar)
        entry = {
            "version": verified.version,
            "sha256": sha,
            "size": tar.stat().st_size,
            "name": verified.manifest.model.name,
            "published": round(time.time(), 3),
        }
        tar.replace(store / f"{sha}.tar")
    index = read_index(store)
    index[verified.version] = entry
    tmp_index = store / f".{INDEX}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    tmp_index.replace(store / INDEX)
    return entry


def _mqtt_client(login: MqttLogin) -> Any:
    """A connected paho client (its network loop started), logged in as ``login`` says."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login.apply(client)
    address = login.broker
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:  # ssl.SSLError included: a certificate the broker or we refuse
        raise LineqcError(f"cannot reach the broker at {address} ({exc})") from None
    client.loop_start()
    return client


def retained_status(login: MqttLogin, prefix: str, wait_s: float) -> dict[str, dict[str, Any]]:
    """``site/line/device`` -> its retained status, for every device the broker knows."""
    found: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    client = _mqtt_client(login)

    def on_message(c: Any, ud: Any, msg: Any) -> None:
        ids = topic_ids(msg.topic, "status")
        if ids is None or not msg.payload:
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with lock:
            found["/".join(ids)] = doc

    client.on_message = on_message
    client.subscribe(f"{prefix}/+/+/+/status", qos=1)
    time.sleep(wait_s)  # retained messages come at once; this bounds the wait for them
    client.disconnect()
    client.loop_stop()
    return found


def select(patterns: str, known: list[str]) -> list[str]:
    """Targets matching any comma-separated SITE/LINE/DEVICE pattern (``*`` globs); an exact
    target is taken even when the broker has not seen the device yet."""
    chosen: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        parts = pattern.split("/")
        if len(parts) != 3:
            raise LineqcError(f"--devices {pattern!r}: expected SITE/LINE/DEVICE (* for any)")
        if all(map(is_id, parts)):
            chosen.append(pattern)
        else:
            chosen.extend(t for t in known if fnmatch.fnmatchcase(t, pattern))
    return sorted(dict.fromkeys(chosen))


def canary_count(text: str, total: int) -> int:
    """``3`` devices or ``25%`` of them (at least one)."""
    try:
        if text.endswith("%"):
            return max(1, round(total * float(text[:-1]) / 100))
        return int(text)
    except ValueError:
        raise LineqcError(f"--canary {text!r}: expected a count or a share like 25%") from None


def deploy(
    login: MqttLogin,
    prefix: str,
    targets: list[str],
    key: Path,
    fields: dict[str, Any],
) -> list[str]:
    """Sign and publish a retained deploy for each target; returns their command ids."""
    private = load_private_key(key)
    client = _mqtt_client(login)
    ids = []
    try:
        for target in targets:
            cmd_id = f"deploy-{fields['version']}-{time.time_ns() // 1000:x}"[:64]
            doc = new_command("deploy", target, cmd_id, **fields)
            info = client.publish(
                f"{prefix}/{target}/cmd", sign_command(doc, private), qos=1, retain=True
            )
            info.wait_for_publish(10)
            if not info.is_published():
                raise LineqcError(f"the broker did not acknowledge the deploy to {target}")
            ids.append(cmd_id)
    finally:
        client.disconnect()
        client.loop_stop()
    return ids


# ---- the fleet table ---------------------------------------------------------------------


def _row(s: Any, target: str, now: float) -> Any:
    from .store import FleetDevice

    row = s.get(FleetDevice, target)
    if row is None:
        row = FleetDevice(target=target, updated_at=now)
        s.add(row)
    return row


def record_deploy(store: Store, target: str, cmd_id: str, version: str, stage: str) -> None:
    """What ``deploy`` sent to ``target``."""
    from .store import FleetEvent

    now = time.time()
    with store.session() as s:
        row = _row(s, target, now)
        row.desired, row.stage, row.deploy_id, row.reply = version, stage, cmd_id, None
        row.updated_at = now
        s.add(
            FleetEvent(
                target=target, kind="deploy", state=stage, version=version, detail=cmd_id, ts=now
            )
        )


def record_message(store: Store, target: str, kind: str, doc: dict[str, Any]) -> None:
    """A device's ``status`` or ``cmd/reply`` into the fleet table; a change of its rollout
    state (or reason), and every deploy reply, is also an event."""
    from .store import FleetEvent

    now = time.time()
    with store.session() as s:
        row = _row(s, target, now)
        if kind == "status":
            r = doc.get("rollout") or {}
            row.state = doc.get("state")
            row.active = r.get("active", doc.get("model_version"))
            row.active_slot, row.candidate = r.get("active_slot"), r.get("candidate")
            if r and (r.get("state"), r.get("reason")) != (row.rollout, row.reason):
                s.add(
                    FleetEvent(
                        target=target,
                        kind="rollout",
                        state=r.get("state"),
                        version=r.get("candidate") or row.active,
                        detail=r.get("reason"),
                        ts=now,
                    )
                )
            if r:
                row.rollout, row.reason = r.get("state"), r.get("reason")
        elif kind == "cmd/reply" and doc.get("cmd") == "deploy":
            row.reply = "accepted" if doc.get("ok") else str(doc.get("error"))
            s.add(
                FleetEvent(
                    target=target,
                    kind="reply",
                    state="ok" if doc.get("ok") else "refused",
                    version=row.desired,
                    detail=row.reply,
                    ts=now,
                )
            )
        else:
            return
        row.updated_at = now


def watch(login: MqttLogin, prefix: str, store: Store, stop: threading.Event) -> int:
    """Keep the fleet table from the broker until ``stop``; returns the messages stored."""
    import queue

    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    client = _mqtt_client(login)
    client.on_message = lambda c, ud, msg: inbox.put((msg.topic, bytes(msg.payload)))
    subscribed = [f"{prefix}/+/+/+/status", f"{prefix}/+/+/+/cmd/reply"]
    client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in subscribed])
    client.subscribe([(t, 1) for t in subscribed])
    stored = 0
    try:
        while not stop.is_set():
            try:
                name, payload = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            kind = "cmd/reply" if name.endswith("/cmd/reply") else "status"
            ids = topic_ids(name, kind)
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if ids is None or not isinstance(doc, dict):
                continue
            record_message(store, "/".join(ids), kind, doc)
            stored += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return stored


# ---- the command line ----------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    entry = publish(args.bundle, args.store, args.public_key)
    print(
        f"published {entry['version']}: {args.store / (entry['sha256'] + '.tar')} "
        f"({entry['size']} bytes, sha256 {entry['sha256']})"
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    entry = read_index(args.store).get(args.bundle)
    if entry is None:
        raise LineqcError(f"--bundle {args.bundle}: not published in {args.store} (fleet publish)")
    login = MqttLogin.from_args(args)
    known = sorted(retained_status(login, args.topic_prefix, args.discover_s))
    targets = select(args.devices, known)
    if args.stage == "canary":
        targets = targets[: canary_count(args.canary, len(targets))]
    if not targets:
        raise LineqcError(f"--devices {args.devices!r}: no device matches (known: {known})")
    bases = args.url or [args.store.resolve().as_uri()]
    fields = {
        "version": entry["version"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "urls": [f"{b.rstrip('/')}/{entry['sha256']}.tar" for b in bases],
        "stage": args.stage,
        "downgrade_to": args.downgrade_to,
        "shadow_frames": args.shadow_frames,
        "min_agreement": args.min_agreement,
        "probation_frames": args.probation_frames,
        "max_uncertain_share": args.max_uncertain_share,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    store = _open_store(args.db) if args.db else None
    for target, cmd_id in zip(
        targets, deploy(login, args.topic_prefix, targets, args.key, fields), strict=True
    ):
        print(f"{target}: deploy {entry['version']} ({args.stage}) as {cmd_id}")
        if store is not None:
            record_deploy(store, target, cmd_id, entry["version"], args.stage)
    return 0


def status_rows(statuses: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for target, doc in sorted(statuses.items()):
        r = doc.get("rollout") or {}
        rows.append(
            {
                "device": target,
                "state": doc.get("state"),
                "active": r.get("active", doc.get("model_version")),
                "candidate": r.get("candidate"),
                "rollout": r.get("state"),
                "reason": r.get("reason"),
            }
        )
    return rows


def _open_store(db: str) -> Store:
    from .store import Store

    return Store(db)


def cmd_watch(args: argparse.Namespace) -> int:
    import signal

    login = MqttLogin.from_args(args)
    store, stop = _open_store(args.db), threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    print(f"fleet table of {args.db} kept from {login}", flush=True)
    stored = watch(login, args.topic_prefix, store, stop)
    print(f"{stored} message(s) stored")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    login = MqttLogin.from_args(args)
    rows = status_rows(retained_status(login, args.topic_prefix, args.discover_s))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(
            f"{r['device']:<36} {r['state'] or '-':<9} active {r['active'] or '-':<14} "
            f"candidate {r['candidate'] or '-':<14} {r['rollout'] or '-'}"
            + (f": {r['reason']}" if r["reason"] else "")
        )
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("publish", help="verify a bundle and store its tar by sha256")
    p.add_argument("bundle", type=Path, help="bundle folder or tar")
    p.add_argument("--store", type=Path, required=True, help="the artifact store folder")
    p.add_argument("--public-key", type=Path, required=True, help="the fleet's PREFIX.pub")
    p.set_defaults(func=cmd_publish)

    def broker_args(p: argparse.ArgumentParser) -> None:
        add_login_args(p, who="the fleet tool")
        p.add_argument(
            "--topic-prefix", default="lineqc/v1", help="the devices' (default: %(default)s)"
        )
        p.add_argument(
            "--discover-s",
            type=float,
            default=1.0,
            help="seconds to gather the devices' retained status (default: %(default)s)",
        )

    p = sub.add_parser("deploy", help="set the desired bundle of selected devices (retained)")
    broker_args(p)
    p.add_argument("--bundle", required=True, metavar="VERSION", help="a published version")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument(
        "--url",
        action="append",
        help="base URL devices fetch <sha256>.tar from (repeatable; default: file:// the store)",
    )
    p.add_argument(
        "--devices",
        required=True,
        metavar="SITE/LINE/DEVICE[,...]",
        help="targets; * matches any id (devices known from their retained status)",
    )
    p.add_argument("--stage", choices=("shadow", "canary", "all"), required=True)
    p.add_argument(
        "--canary", default="1", help="canary: a count or a share (25%%; default: %(default)s)"
    )
    p.add_argument("--key", type=Path, required=True, help="the fleet's private key")
    p.add_argument("--downgrade-to", metavar="VERSION", help="allow this exact older version")
    p.add_argument("--shadow-frames", type=int)
    p.add_argument("--min-agreement", type=float)
    p.add_argument("--probation-frames", type=int)
    p.add_argument("--max-uncertain-share", type=float)
    p.add_argument("--db", help="also record the deploys in this review store's fleet table")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("watch", help="keep the review store's fleet table from the broker")
    broker_args(p)
    p.add_argument("--db", required=True, help="the review store (as lineqc review serve)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="each device's active and candidate bundle, rollout state")
    broker_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
