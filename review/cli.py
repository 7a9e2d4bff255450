"""`lineqc review ...`: the collector, inspector accounts, the web app, labels to a dataset.

Each command imports its module only when it runs, so `lineqc review --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lineqc.edge.mqtt_login import add_login_args
from lineqc.errors import LineqcError

DB_HELP = (
    "review database: an SQLAlchemy URL (postgresql+psycopg://host/db) or an SQLite path "
    "(default: $LINEQC_REVIEW_DB, else review.db)"
)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("LINEQC_REVIEW_DB", "review.db"), help=DB_HELP)
    p.add_argument(
        "--images",
        default=os.environ.get("LINEQC_REVIEW_IMAGES"),
        help="content-addressed image folder (default: beside an SQLite file, "
        "else ./review-images)",
    )


def _guide_args(p: argparse.ArgumentParser) -> None:
    """The web app's options beyond the store: the class guide and the change window."""
    from .queue import CHANGE_WINDOW_S

    p.add_argument(
        "--dataset",
        default=None,
        help="a lineqc dataset whose labelled images the class guide shows as examples, and "
        "whose OK class it marks (default: examples from frames already labelled here)",
    )
    p.add_argument(
        "--guide",
        default=None,
        metavar="FILE",
        help="YAML mapping class name -> one-line description for the class guide "
        "(adds to or replaces the built-in ones)",
    )
    p.add_argument(
        "--change-window",
        type=float,
        default=CHANGE_WINDOW_S,
        metavar="S",
        help="seconds an inspector may change an answer after giving it; 0: never "
        f"(default: {CHANGE_WINDOW_S:g})",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="a reverse proxy's address or network (repeatable): only requests from these "
        "have their X-Forwarded-For (client address: sign-in throttling, logs) and "
        "X-Forwarded-Proto (https: the Secure cookie flag) believed",
    )


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="review_cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("collect", help="store the devices' flagged frames from MQTT")
    _db_args(p)
    add_login_args(p, default_broker="mqtt://127.0.0.1:1883", who="the collector")
    p.add_argument(
        "--topic",
        default="lineqc/v1/+/+/+/sample",
        help="the devices' sample topic filter (default: every site, line and device)",
    )
    p.add_argument(
        "--group",
        default="lineqc-review",
        help="shared subscription group: collectors in one group split the messages; '' for a "
        "plain subscription (one collector; Mosquitto 2.0 forgets shared subscriptions when "
        "it restarts, plain ones it keeps; default: %(default)s)",
    )
    p.add_argument(
        "--client-id",
        default="lineqc-collector",
        help="MQTT client id; the broker keeps this collector's session under it "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--exit-idle",
        type=float,
        default=None,
        metavar="S",
        help="exit after S seconds without a message (scripts, tests); default: run forever",
    )
    p.add_argument(
        "--monitor-config",
        type=Path,
        default=None,
        metavar="YAML",
        help="fleet monitoring: time bucket, window, bundles with drift references, alarm "
        "thresholds per line (review/README.md; default: built-in thresholds)",
    )
    p.add_argument(
        "--no-monitor",
        action="store_true",
        help="store samples only: no result/telemetry/status rollups, no alarms",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        metavar="N",
        help="messages (samples and monitoring) committed, then acknowledged, together "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=0.2,
        metavar="S",
        help="commit a smaller batch after S seconds (default: %(default)s)",
    )
    p.set_defaults(func=_collect)

    p = sub.add_parser(
        "migrate",
        help="bring the review database's schema to this lineqc's newest revision (every "
        "command does it when it opens the database; this one says where it stands)",
    )
    _db_args(p)
    p.set_defaults(func=_migrate)

    p = sub.add_parser("add-user", help="create an inspector account (or reset its password)")
    _db_args(p)
    p.add_argument("name")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("--admin", action="store_true", help="may adjudicate and see agreement")
    p.set_defaults(func=_add_user)

    p = sub.add_parser("serve", help="the inspectors' web app")
    _db_args(p)
    p.add_argument(
        "--port", type=int, default=8080, help="0: a free port, printed (default: %(default)s)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    _guide_args(p)
    p.add_argument(
        "--monitor-config",
        type=Path,
        default=None,
        metavar="YAML",
        help="the collector's monitoring config (bucket, thresholds) for /health and /metrics",
    )
    p.add_argument(
        "--bundle-store",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve the bundle tars of lineqc fleet publish --store DIR to devices at "
        "/bundles/<sha256>.tar (with Range; no sign-in: they are signed)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("add-gold", help="mix frames with known labels from a dataset into review")
    _db_args(p)
    p.add_argument("--dataset", required=True, help="dataset folder (its labelled rows)")
    p.add_argument(
        "--count", type=int, default=20, help="how many gold frames to add (default: %(default)s)"
    )
    p.add_argument(
        "--split", default="train", help="take them from this split (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="which rows (default: %(default)s)")
    p.set_defaults(func=_add_gold)

    p = sub.add_parser(
        "export-labels", help="agreed and adjudicated labels into a dataset, with provenance"
    )
    _db_args(p)
    p.add_argument("--dataset", required=True, help="dataset folder to add the frames to")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_export_labels)

    p = sub.add_parser(
        "demo", help="make demo's review stage: broker, collector, device replay, app"
    )
    _db_args(p)
    p.add_argument("--device-config", required=True, help="the replaying device's YAML")
    p.add_argument("--port", type=int, default=8080, help="the app's port (default: %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop before starting the app")
    _guide_args(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "demo-inspect",
        help="make demo-inspect: scripted inspectors (an oracle answering from the dataset's "
        "known labels) label the running demo app's queue; an admin settles disputes",
    )
    _db_args(p)
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8080/",
        help="the running review app (default: %(default)s)",
    )
    p.add_argument(
        "--dataset", required=True, help="the demo's dataset: the known labels the oracle gives"
    )
    p.add_argument(
        "--wrong-share",
        type=float,
        default=0.1,
        metavar="F",
        help="share of answers wrong on purpose, to show agreement, adjudication and label "
        "conflicts (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="which answers are wrong (default: 0)")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=_demo_inspect)


def _collect(args: argparse.Namespace) -> int:
    from .collector import run_collector

    return run_collector(args)


def _migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from .store import connect, normalize_url, upgrade_schema

    engine = connect(args.db)
    try:
        before, now = upgrade_schema(engine)
    finally:
        engine.dispose()
    where = make_url(normalize_url(args.db))  # str() hides a password
    if before == now:
        print(f"review database {where}: at revision {now}, the newest")
    else:
        print(f"review database {where}: upgraded from {before or 'no revision'} to {now}")
    return 0


def _add_user(args: argparse.Namespace) -> int:
    from .auth import add_user
    from .store import Store

    if not args.password_stdin:
        raise LineqcError("add-user: pass --password-stdin and the password on standard input")
    password = sys.stdin.readline().rstrip("\r\n")
    store = Store(args.db, args.images)
    created = add_user(store, args.name, password, admin=args.admin)
    print(f"{'created' if created else 'updated'} user {args.name!r} in {store.url}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import serve

    return serve(args)


def _add_gold(args: argparse.Namespace) -> int:
    from .gold import add_gold

    return add_gold(args)


def _export_labels(args: argparse.Namespace) -> int:
    from .export_labels import run_export_labels

    return run_export_labels(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _demo_inspect(args: argparse.Namespace) -> int:
    from .demo_inspect import run_demo_inspect

    return run_demo_inspect(args)
