"""`lineqc edge ...`: the device side. numpy, OpenCV and ONNX Runtime only; never torch."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from lineqc.errors import LineqcError

from .preprocess import PreprocessSpec, preprocess

if TYPE_CHECKING:
    from .broker import BrokerProcess
    from .config import DeviceConfig


def runtime_info() -> dict[str, Any]:
    """What this device can run: Python, OpenCV, and which inference backends exist."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "backends": {},
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        info["backends"]["onnxruntime"] = {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
        }
    if importlib.util.find_spec("tensorrt") is not None:
        info["backends"]["tensorrt"] = {"available": True}
    return info


def info_text(info: dict[str, Any]) -> str:
    """``runtime_info`` for a person: one line per fact, one per backend."""
    lines = [
        f"python       {info['python']} ({info['machine']})",
        f"opencv       {info['opencv']}",
        f"numpy        {info['numpy']}",
    ]
    ort = info["backends"].get("onnxruntime")
    lines.append(
        f"onnxruntime  {ort['version']}, providers: {', '.join(ort['providers'])}"
        if ort
        else "onnxruntime  not installed (pip install 'lineqc[edge]')"
    )
    lines.append(
        "tensorrt     installed (engines are built on this device: lineqc export build-engine)"
        if "tensorrt" in info["backends"]
        else "tensorrt     not installed (ONNX Runtime runs the models)"
    )
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    info = runtime_info()
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else info_text(info))
    return 0


def cmd_cameras(args: argparse.Namespace) -> int:
    """The GigE Vision (and other GenICam) cameras Aravis finds: what gige:// and genicam://
    name in camera.source."""
    from .gige import list_devices, load_aravis
    from .sources import SourceError

    try:
        devices = list_devices(load_aravis())
    except SourceError as exc:
        print(f"lineqc edge cameras: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(devices, indent=2))
    elif not devices:
        print("no GigE Vision or GenICam camera found (discovery broadcast on every interface)")
    for d in devices if not args.json else []:
        uri = f"gige://{d['serial']}" if d["protocol"] == "GigEVision" else f"genicam://{d['id']}"
        print(f"{uri:28} {d['model']:20} {d['address'] or d['physical_id']:16} id {d['id']}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Show what the model would see of one image: shape and per-channel statistics."""
    frame = cv2.imread(str(args.image), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise LineqcError(f"{args.image}: not a readable image")
    channels = args.channels
    spec = PreprocessSpec(
        height=args.size,
        width=args.size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
    tensor = preprocess(frame, spec)
    doc = {
        "image": str(args.image),
        "frame_shape": list(frame.shape),
        "tensor_shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "mean": [round(float(c.mean()), 6) for c in tensor],
        "std": [round(float(c.std()), 6) for c in tensor],
    }
    print(json.dumps(doc, indent=2) if args.json else doc)
    return 0


def _setup_logging(verbose: bool) -> None:
    import logging
    import sys

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{args.file}: {line}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK (device {cfg.device.id}, camera {cfg.camera.source}, "
        f"topics {cfg.topic_root}/...)"
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .config import SCHEMA_FILE, schema_text

    text = schema_text()
    if args.write:
        target = args.out or SCHEMA_FILE
        Path(target).write_text(text)
        print(f"wrote {target}")
    else:
        print(text, end="")
    return 0


def _broker_override(
    cfg: DeviceConfig, address: str | None, broker: BrokerProcess | None
) -> DeviceConfig:
    """The config with ``--broker HOST:PORT`` or the private broker in place of its own."""
    update: dict[str, Any] = {}
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise LineqcError(f"--broker {address!r}: expected HOST:PORT")
        update = {"host": host, "port": int(port)}
    if broker is not None:
        update = {
            "host": "127.0.0.1",
            "port": broker.port,
            "tls": None,
            "protocol": broker.mqtt_protocol,
        }
    if not update:
        return cfg
    return cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update=update)})


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import Runtime, latency_table

    _setup_logging(args.verbose)
    if args.private_broker and args.broker:
        raise LineqcError("--private-broker and --broker exclude each other")
    cfg = _broker_override(load_config(args.config), args.broker, None)
    broker = None
    if args.private_broker:
        from .broker import private_broker

        broker = private_broker().start()
        print(
            f"private {broker.name} on 127.0.0.1:{broker.port} (MQTT {broker.mqtt_protocol})",
            flush=True,
        )
        cfg = _broker_override(cfg, None, broker)

    def reload() -> DeviceConfig:  # SIGHUP: the file again, with this command line's broker
        return _broker_override(load_config(args.config), args.broker, broker)

    try:
        runtime = Runtime(cfg, max_frames=args.max_frames, config_loader=reload)
        runtime.install_signal_handlers()
        summary = runtime.run()
    finally:
        if broker is not None:
            broker.stop()
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(
            f"{summary['frames']} frames in {summary['elapsed_s']:.1f} s "
            f"({summary['fps']:.1f} fps), "
            f"{summary['ended']}; model {summary['model_version']} on {summary['backend']}"
        )
        print(decision_figures(summary))
        cap = summary["capture"]
        print(
            f"capture: {cap['frames']} frames, {cap['drops']} dropped, {cap['reopens']} reopen(s)"
        )
        box = summary["outbox"]
        print(
            f"outbox: {box['left']} message(s) left"
            + (" (all delivered)" if box["flushed"] else " (delivered at the next start)")
        )
        plc = summary["actuator"]
        if plc["counters"]:  # a PLC actuator
            c, lat = plc["counters"], plc["latency_ms"].get("plc_write")
            took = f"; decision->PLC p50 {lat['p50']:.2f}, p99 {lat['p99']:.2f} ms" if lat else ""
            print(
                f"plc ({plc['kind']}): {c.get('plc_writes_ok', 0)} written in time, "
                f"{c.get('plc_deadline_missed', 0)} missed the deadline (fail-safe), "
                f"{c.get('plc_reconnects', 0)} reconnect(s){took}"
            )
        print(latency_table(summary["latency_ms"]))
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    """Check the config, then write (or print) the systemd unit that runs it."""
    import re

    from .config import ConfigError, load_config
    from .service import UnitOptions, install_unit

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{args.config}: {line}", file=sys.stderr)
        print("no unit written: fix the config first", file=sys.stderr)
        return 1
    name = (args.name or f"lineqc-edge-{cfg.device.id}").removesuffix(".service")
    if not re.fullmatch(r"[A-Za-z0-9:_.-]{1,200}", name):
        raise LineqcError(f"--name {args.name!r}: not a systemd unit name (letters, digits, :_.-)")
    if args.watchdog_s < 1:
        raise LineqcError(f"--watchdog-s {args.watchdog_s}: must be at least 1")
    groups = tuple(g for g in args.groups.split(",") if g)
    opts = UnitOptions(name=name, user=args.user, groups=groups, watchdog_s=args.watchdog_s)
    done = install_unit(cfg, args.config, opts, None if args.dry_run else args.dest)
    say = (lambda text: print(text, file=sys.stderr)) if args.dry_run else print
    if args.dry_run:
        print(done.text, end="")
    if done.verdict is None:
        say("systemd-analyze verify: not installed here, the unit was not checked")
    elif done.verdict.ok:
        say("systemd-analyze verify: OK")
    else:
        say(f"systemd-analyze verify: FAILED\n{done.verdict.output}")
    for warning in done.warnings:
        say(f"warning: {warning}")
    if done.verdict is not None and not done.verdict.ok:
        if not args.dry_run:
            say("no unit written")
        return 1
    if done.path is not None:
        say(f"wrote {done.path}")
        say(f"start it: systemctl daemon-reload && systemctl enable --now {name}")
        say(f"reload its config: systemctl reload {name}; its log: journalctl -u {name}")
    return 0


def _share(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.0f}%)" if total else str(n)


def decision_figures(summary: dict[str, Any]) -> str:
    """What a line manager asks after a run: frames inspected, OK, rejected, sent to review."""
    decisions, total = summary["decisions"], summary["frames"]
    defects = {k.split(":", 1)[1]: v for k, v in decisions.items() if k.startswith("defect:")}
    by_class = ", ".join(f"{name} {n}" for name, n in sorted(defects.items()))
    sampled = summary["sampling"]
    uncertain, audit = sampled.get("sampled_uncertain", 0), sampled.get("sampled_audit", 0)
    return "\n".join(
        [
            f"inspected {total} frames: {_share(decisions.get('ok', 0), total)} passed as OK, "
            f"{_share(decisions.get('defect', 0), total)} rejected as defects"
            + (f" ({by_class})" if by_class else "")
            + f", {_share(decisions.get('uncertain', 0), total)} sent to review as uncertain",
            f"review queue: {uncertain + audit} sample(s) sent ({uncertain} uncertain, "
            f"{audit} confident frames audited at random)",
        ]
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_report, run_bench

    report = run_bench(
        args.bundle,
        str(args.source),
        frames=args.frames,
        precision=args.precision,
        threads=args.threads,
        pubkey=args.pubkey,
        broker=args.broker,
        baseline=not args.no_baseline,
        baseline_frames=args.baseline_frames,
        allow_failed_gate=args.allow_failed_gate,
        plc=args.plc,
        plc_deadline_ms=args.plc_deadline_ms,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _threshold(text: str) -> tuple[str, float | None]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLASS=P (P a probability or none)")
    try:
        return name, None if value.lower() in ("none", "null") else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def cmd_command(args: argparse.Namespace) -> int:
    """Sign a command with the fleet's key, send it to one device and print its reply."""
    import uuid

    from .commands import new_command, send_command, sign_command
    from .mqtt_login import MqttLogin
    from .signing import load_private_key
    from .wire import is_id

    site_line_device = args.device.split("/")
    if len(site_line_device) != 3 or not all(map(is_id, site_line_device)):
        raise LineqcError(f"--device {args.device!r}: expected SITE/LINE/DEVICE (the config ids)")
    login = MqttLogin.from_args(args)  # the broker, the TLS files, the password file
    fields: dict[str, Any] = {}
    if args.action == "set-thresholds":
        fields = {"prob_floor": args.prob_floor, "margin": args.margin}
        fields["thresholds"] = dict(args.threshold) if args.threshold else None
    elif args.action == "reload":
        fields = {"bundle": args.bundle, "downgrade_to": args.downgrade_to}
    name = {
        "set-thresholds": "set_thresholds",
        "reload": "reload_bundle",
        "reload-config": "reload_config",
    }.get(args.action, args.action)
    cmd_id = args.id or uuid.uuid4().hex[:12]
    try:
        doc = new_command(name, args.device, cmd_id, **fields)
    except LineqcError as exc:
        raise LineqcError(f"not sent: {exc}") from None
    payload = sign_command(doc, load_private_key(args.key))
    root = f"{args.topic_prefix}/{args.device}"
    reply = send_command(login, root, payload, cmd_id, args.timeout)
    if reply is None:
        raise LineqcError(
            f"no reply from {args.device} within {args.timeout:g} s (sent as {cmd_id})"
        )
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        print(
            f"{args.device}: {name} {cmd_id}: "
            + ("done" if reply.get("ok") else f"refused: {reply.get('error')}")
        )
    return 0 if reply.get("ok") else 1


def _register_command(sub: Any) -> None:
    from .mqtt_login import add_login_args

    p = sub.add_parser(
        "command",
        help="sign a command with the fleet's key and send it to one device",
        description="Sign a command with the fleet's Ed25519 key (lineqc keys generate) and "
        "send it to one device's cmd topic; prints the device's reply (exit 1 if refused). "
        "Through a TLS broker with client certificates (firmware_config/mosquitto-tls.conf) "
        "send it with the certificate the ACL lets write commands (lineqc-fleet): "
        "--broker mqtts://HOST:8883 --tls-ca CA --tls-cert lineqc-fleet.crt "
        "--tls-key lineqc-fleet.key.",
    )
    add_login_args(p, who="the command sender")
    p.add_argument("--device", required=True, metavar="SITE/LINE/DEVICE")
    p.add_argument("--key", type=Path, required=True, help="the fleet's private key (PREFIX.key)")
    p.add_argument(
        "--topic-prefix",
        default="lineqc/v1",
        help="the devices' mqtt.topic_prefix (default: %(default)s)",
    )
    p.add_argument("--id", help="the command's id, echoed in the reply (default: random)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the reply (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=cmd_command)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("set-thresholds", help="change the decision policy's parameters")
    a.add_argument("--prob-floor", type=float, help="top probability under this: review")
    a.add_argument("--margin", type=float, help="top-two margin under this: review")
    a.add_argument(
        "--threshold",
        type=_threshold,
        action="append",
        metavar="CLASS=P",
        help="a class's minimum probability (none: always review); repeatable",
    )
    a = actions.add_parser(
        "reload", help="verify and load a bundle from the device's bundle folder"
    )
    a.add_argument("--bundle", help="its name in the bundle folder (default: the configured one)")
    a.add_argument(
        "--downgrade-to",
        metavar="VERSION",
        help="the exact older version to install (the device must allow downgrades)",
    )
    actions.add_parser(
        "reload-config",
        help="re-read the device's config file and apply what may change while it runs "
        "(decision, sampling, telemetry interval, latency budget), as systemctl reload does",
    )
    actions.add_parser("status", help="ask for the device's status (published, retained)")


def _register_install_service(sub: Any) -> None:
    from .service import DEFAULT_UNIT_DIR, UnitOptions

    p = sub.add_parser(
        "install-service",
        help="check a device config and write the systemd unit that runs it",
        description="Check the config (as check-config does), then write a systemd unit "
        "running `lineqc edge run --config CONFIG` with this Python: Type=notify with a "
        "watchdog fed while frames progress, restart on failure, journald logging, a dedicated "
        "user and hardening; `systemctl reload` re-reads the config. The unit is checked with "
        "`systemd-analyze verify` where it is installed and is not written if it fails.",
    )
    p.add_argument("config", type=Path, metavar="CONFIG", help="the device config (YAML)")
    p.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_UNIT_DIR,
        help="folder to write NAME.service into (default: %(default)s)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--name", help="unit name (default: lineqc-edge-DEVICE_ID)")
    p.add_argument(
        "--user",
        default=UnitOptions.user,
        help="the user it runs as; 'root' for none (default: %(default)s)",
    )
    p.add_argument(
        "--groups",
        default=",".join(UnitOptions.groups),
        help="its supplementary groups, comma-separated: cameras need video; GPIO may need gpio "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--watchdog-s",
        type=int,
        default=UnitOptions.watchdog_s,
        help="WatchdogSec: restarted when no frame was inspected for this long, also after "
        "the start (default: %(default)s)",
    )
    p.set_defaults(func=cmd_install_service)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("info", help="this device's runtime and available inference backends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("cameras", help="list the GigE Vision / GenICam cameras Aravis finds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cameras)

    p = sub.add_parser("preprocess", help="run the preprocessing contract on one image")
    p.add_argument("image", type=Path)
    p.add_argument("--size", type=int, default=224, help="model input side (default: %(default)s)")
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=1,
        help="1 gray, 3 BGR (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("check-config", help="validate a device config; every error with its key")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("schema", help="print (or --write) the device config's JSON Schema")
    p.add_argument("--write", action="store_true", help="write firmware_config/device.schema.json")
    p.add_argument("--out", type=Path, help="with --write: another file")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("run", help="run the inspection pipeline of a device config")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--private-broker",
        action="store_true",
        help="start a broker on a free loopback port and publish there (demo): Mosquitto, or "
        "the embedded Python broker amqtt when Mosquitto is not installed (LINEQC_BROKER=python "
        "forces it)",
    )
    p.add_argument(
        "--broker", metavar="HOST:PORT", help="publish to this broker instead of the config's"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_run)

    _register_install_service(sub)

    p = sub.add_parser("bench", help="latency and throughput on frames replayed from memory")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--source", required=True, help="image folder, glob, dataset://... or video")
    p.add_argument("--frames", type=int, default=500, help="frames timed (default: %(default)s)")
    p.add_argument(
        "--precision", choices=("int8", "fp32"), default="int8", help="(default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="ONNX Runtime intra-op threads (default: %(default)s)",
    )
    p.add_argument("--pubkey", type=Path, help="verify the bundle's signature first")
    p.add_argument(
        "--broker",
        default="auto",
        help="auto (private mosquitto), none, or HOST:PORT (default: %(default)s)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the PyTorch eager loop")
    p.add_argument(
        "--allow-failed-gate",
        action="store_true",
        help="time an INT8 model whose accuracy gate failed (the runtime refuses it otherwise)",
    )
    p.add_argument("--baseline-frames", type=int, help="frames for the baseline (default: 200)")
    p.add_argument(
        "--plc",
        choices=("modbus", "opcua"),
        help="also write every decision to a PLC server started on loopback (pymodbus or "
        "asyncua) and report decision->PLC write latency (default: no PLC)",
    )
    p.add_argument(
        "--plc-deadline-ms",
        type=float,
        default=50.0,
        help="the actuator's deadline with --plc (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    _register_command(sub)
