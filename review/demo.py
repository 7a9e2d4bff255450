"""`lineqc review demo`: the review end of `make demo`, with the real commands in order.

A private Mosquitto; `lineqc review collect` once to open its persistent session (it
subscribes and leaves, so the broker queues the samples for it); the device replay
publishing to that broker (the dataset's held-out production parts: frames no model
trained on, whose reviewed labels may join training); the collector again to store
everything queued; demo accounts; then `lineqc review serve` with the flagged frames in the
queue.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import func, select

from lineqc.datasets import manifest as mf
from lineqc.datasets.split import production_ids
from lineqc.edge.broker import Mosquitto, mosquitto_binary
from lineqc.errors import LineqcError

from .store import Frame, Store, set_setting

# (name, password, admin): two inspectors, so that double review has someone to ask
DEMO_USERS = (
    ("inspector", "inspect-demo", False),
    ("inspector2", "inspect-demo-2", False),
    ("admin", "admin-demo", True),
)
DOUBLE_REVIEW_SHARE = 0.3  # more than a plant's 0.1: the demo's few frames show agreement


def _lineqc(*args: str, stdin: str | None = None) -> None:
    cmd = [sys.executable, "-m", "lineqc", *args]
    print("$ lineqc " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, input=stdin, text=True)
    if proc.returncode != 0:
        raise LineqcError(f"`lineqc {' '.join(args)}` failed (exit {proc.returncode})")


def _check_production(dataset: str | None) -> None:
    """The demo replays the dataset's new production; a dataset split without one (by an
    older `make demo`) would replay nothing."""
    if dataset is not None and not production_ids(mf.load(dataset)):
        raise LineqcError(
            f"review demo: {dataset} holds no parts held out as new production (split before "
            f"`lineqc data split --production` existed?); remove it and runs/ (`make clean`) so "
            "that `make demo` imports and splits it again"
        )


def run_demo(args: argparse.Namespace) -> int:
    if mosquitto_binary() is None:
        raise LineqcError("review demo: needs mosquitto (make setup installs it as root)")
    _check_production(args.dataset)
    db = ["--db", args.db] + (["--images", args.images] if args.images else [])
    store = Store(args.db, args.images)
    with store.session() as s:  # before the collector stores frames: it draws by this share
        set_setting(s, "double_review_share", DOUBLE_REVIEW_SHARE)
    store.close()
    with tempfile.TemporaryDirectory(prefix="lineqc-demo-broker-") as folder:
        broker = Mosquitto(folder=Path(folder)).start()
        url = f"mqtt://127.0.0.1:{broker.port}"
        collect = ["review", "collect", "--broker", url, *db, "--client-id", "demo-collector"]
        try:
            _lineqc(*collect, "--exit-idle", "0.5")
            _lineqc(
                "edge", "run", "--config", str(args.device_config),
                "--broker", f"127.0.0.1:{broker.port}",
            )  # fmt: skip
            _lineqc(*collect, "--exit-idle", "3")
        finally:
            broker.stop()
    for name, password, admin in DEMO_USERS:
        _lineqc("review", "add-user", name, "--password-stdin", *db, *(["--admin"] * admin),
                stdin=password + "\n")  # fmt: skip
    store = Store(args.db, args.images)
    with store.session() as s:
        frames = s.scalar(select(func.count(Frame.id))) or 0
    store.close()
    print(f"review queue: {frames} flagged frame(s) in {store.url}")
    print(
        "demo logins: inspector / inspect-demo, inspector2 / inspect-demo-2, "
        "admin / admin-demo (agreement, adjudication, label conflicts)"
    )
    if args.no_serve:
        return 0
    from .app import serve

    return serve(argparse.Namespace(**{**vars(args), "host": "127.0.0.1"}))
