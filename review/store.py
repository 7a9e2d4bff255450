"""The review store: frames flagged by devices, inspectors, their labels; one definition.

The metadata lives in a database named by an SQLAlchemy URL (SQLite by default, PostgreSQL
for large plants); the images live in a content-addressed folder beside it
(``images/ab/<sha256>.jpg``), written and fsynced before the row that points at them is
committed, so a row never names a missing image. A frame's defect map, when its model sent
one, lies beside its image as ``images/ab/<image sha256>.defect.png`` (no column names it:
the image's sha256 does); the first map stored for an image is kept. A frame is stored
once per ``frame_id`` (the devices deliver at least once).

Tables: ``frames`` (one flagged or gold frame), ``users``, ``sessions`` (web sign-ins),
``reviews`` (one inspector's current answer for one frame), ``review_history`` (the answers
they replaced), ``adjudications`` (the final word on a disagreement), ``rejects`` (malformed
messages the collector counted, without the payload) and ``settings``; fleet monitoring's
``monitor_*`` tables (rollups per camera and device, device states, drift baselines, alarms).
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from lineqc.atomic import atomic_write_many
from lineqc.edge.wire import Sample
from lineqc.errors import LineqcError

UNSURE = "unsure"  # an inspector's answer that is not a class
SKIP = "skip"  # the inspector passed; the frame stays in the queue for others
DEFECT_MAP_SUFFIX = ".defect.png"  # a frame's defect map, beside its image
POLICY_VERSION = "review-v1"  # the labelling rules inspectors follow (into the dataset rows)


class StoreError(LineqcError):
    """A review database or image store that cannot be used; the message says why."""


class Outcome(enum.Enum):
    """What ``Store.add_sample`` did with a sample (true only when it stored it)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the frame id is stored with the same content (redelivery)
    CONFLICT = "conflict"  # the frame id is stored with other content: the first is kept

    def __bool__(self) -> bool:
        return self is Outcome.STORED


class Base(DeclarativeBase):
    pass


class Frame(Base):
    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    why: Mapped[str] = mapped_column(String(16))  # uncertain | audit | gold
    device: Mapped[str] = mapped_column(String(100), index=True)
    site: Mapped[str] = mapped_column(String(100))
    line: Mapped[str] = mapped_column(String(100), index=True)
    camera: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)  # a camera's frame counter runs long
    ts: Mapped[float] = mapped_column(Float, index=True)  # capture time, Unix seconds
    model_version: Mapped[str] = mapped_column(String(100))
    classes: Mapped[list[str]] = mapped_column(JSON)
    probabilities: Mapped[list[float]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(String(16))
    predicted: Mapped[str] = mapped_column(String(100), index=True)  # the model's top class
    confidence: Mapped[float] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(String(100))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    image_scale: Mapped[float | None] = mapped_column(Float)
    image_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)
    required_reviews: Mapped[int] = mapped_column(Integer, default=1)  # 2: double review
    gold_label: Mapped[str | None] = mapped_column(String(100))  # set for gold frames only

    @property
    def is_gold(self) -> bool:
        return self.gold_label is not None


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class WebSession(Base):
    __tablename__ = "sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  # never the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("frame_pk", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_pk: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(100))  # a class, UNSURE or SKIP
    created_at: Mapped[float] = mapped_column(Float)


class ReviewHistory(Base):
    """An answer its inspector replaced: a skip answered later, or an answer changed within
    the change window. ``reviews`` holds each inspector's current answer (the one that
    counts); this table keeps every earlier one, so nothing is overwritten silently."""

    __tablename__ = "review_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_pk: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(100))  # the answer replaced
    answered_at: Mapped[float] = mapped_column(Float)  # when it had been given
    replaced_at: Mapped[float] = mapped_column(Float)


class Adjudication(Base):
    __tablename__ = "adjudications"

    frame_pk: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    label: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)


class Reject(Base):
    __tablename__ = "rejects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    topic: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)


class FleetDevice(Base):
    """Each device's rollout as the server sees it (``fleet.py``): the last deploy sent to
    it, and the latest its status and command replies said."""

    __tablename__ = "fleet_devices"

    target: Mapped[str] = mapped_column(String(200), primary_key=True)  # site/line/device
    state: Mapped[str | None] = mapped_column(String(16))  # online, degraded, offline, ...
    active: Mapped[str | None] = mapped_column(String(64))
    active_slot: Mapped[str | None] = mapped_column(String(16))
    candidate: Mapped[str | None] = mapped_column(String(64))
    rollout: Mapped[str | None] = mapped_column(String(32))  # the device's rollout state
    reason: Mapped[str | None] = mapped_column(Text)
    desired: Mapped[str | None] = mapped_column(String(64))  # the version deployed to it
    stage: Mapped[str | None] = mapped_column(String(16))
    deploy_id: Mapped[str | None] = mapped_column(String(64))
    reply: Mapped[str | None] = mapped_column(Text)  # "accepted" or the refusal
    updated_at: Mapped[float] = mapped_column(Float)


class FleetEvent(Base):
    """Every step of every rollout: deploys sent, replies, rollout state changes."""

    __tablename__ = "fleet_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # deploy, reply, rollout
    state: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[float] = mapped_column(Float)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


# ---- fleet monitoring (monitor.py): rollups, not every message --------------------------


class Rollup(Base):
    """One camera's results in one time bucket (of one model version): counts, a latency
    histogram (log bins, ``monitor.latency_bin``) and the drift statistic's histogram."""

    __tablename__ = "monitor_rollups"
    __table_args__ = (UniqueConstraint("device", "camera", "model_version", "bucket"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(100))
    line: Mapped[str] = mapped_column(String(100), index=True)
    device: Mapped[str] = mapped_column(String(100))
    camera: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(100))
    bucket: Mapped[int] = mapped_column(BigInteger, index=True)  # start, Unix seconds
    frames: Mapped[int] = mapped_column(Integer, default=0)
    ok: Mapped[int] = mapped_column(Integer, default=0)
    defect: Mapped[int] = mapped_column(Integer, default=0)
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    audited: Mapped[int] = mapped_column(Integer, default=0)
    latency: Mapped[dict[str, int]] = mapped_column(JSON)  # log bin -> frames
    brightness: Mapped[list[int]] = mapped_column(JSON)  # drift.BINS counts
    brightness_n: Mapped[int] = mapped_column(Integer, default=0)
    drift_psi: Mapped[float | None] = mapped_column(Float)  # scored while this was the latest
    drift_ref: Mapped[str | None] = mapped_column(String(32))  # bundle | first_frames
    updated_at: Mapped[float] = mapped_column(Float)


class DeviceRollup(Base):
    """One device's telemetry reports in one time bucket."""

    __tablename__ = "monitor_device_rollups"
    __table_args__ = (UniqueConstraint("device", "bucket"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(100))
    line: Mapped[str] = mapped_column(String(100), index=True)
    device: Mapped[str] = mapped_column(String(100))
    bucket: Mapped[int] = mapped_column(BigInteger, index=True)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    fps: Mapped[float] = mapped_column(Float, default=0.0)  # the last report's
    drops: Mapped[int] = mapped_column(Integer, default=0)
    outbox_depth_max: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


class DeviceState(Base):
    """Each device's latest ``status``."""

    __tablename__ = "monitor_devices"

    device: Mapped[str] = mapped_column(String(100), primary_key=True)
    site: Mapped[str] = mapped_column(String(100))
    line: Mapped[str] = mapped_column(String(100), index=True)
    state: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(100))
    ok_class: Mapped[str | None] = mapped_column(String(100))
    problems: Mapped[list[str]] = mapped_column(JSON)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)


class DriftBaseline(Base):
    """A camera's own first frames on a model version: the drift reference where the
    bundle carries none (fixed once complete)."""

    __tablename__ = "monitor_references"
    __table_args__ = (UniqueConstraint("device", "camera", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[str] = mapped_column(String(100))
    camera: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(100))
    counts: Mapped[list[int]] = mapped_column(JSON)
    frames: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class Alarm(Base):
    """One alarm's current state (camera '' for a device's own)."""

    __tablename__ = "monitor_alarms"
    __table_args__ = (UniqueConstraint("device", "camera", "alarm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(100))
    line: Mapped[str] = mapped_column(String(100), index=True)
    device: Mapped[str] = mapped_column(String(100))
    camera: Mapped[str] = mapped_column(String(100))
    alarm: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # firing | ok
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)  # of the current state
    updated_at: Mapped[float] = mapped_column(Float)


DEFAULT_SETTINGS: dict[str, Any] = {
    "double_review_share": 0.1,  # share of frames that two inspectors label
    "gold_share": 0.05,  # how often a gold frame is slipped into an inspector's queue
}


# ---- the database -------------------------------------------------------------------------


def normalize_url(db: str) -> str:
    """An SQLAlchemy URL; a bare path means an SQLite file."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    try:
        make_url(db)
    except ArgumentError as exc:
        raise StoreError(f"--db {db!r}: not a database URL ({exc})") from None
    return db


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    # WAL lets the web app read while the collector writes; FULL syncs each commit, so a
    # frame acknowledged to the broker survives a power cut.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _switch_to_wal(cur: Any, tries: int = 500) -> None:
    # Switching a new file to WAL can answer "database is locked" at once, without the busy
    # handler, while another process switches it too (two commands opening a new database
    # together); the mode persists in the file, so retrying until one of them has done it ends.
    for attempt in range(tries):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.02)


def connect(db: str) -> Engine:
    """An engine on the review database, as it is (``open_engine`` also migrates it)."""
    url = normalize_url(db)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:  # unknown dialect, driver not installed
        raise StoreError(f"--db {make_url(url)!r}: {exc}") from None


def open_engine(db: str) -> Engine:
    """Connect to the review database and bring its schema to the newest revision."""
    engine = connect(db)
    upgrade_schema(engine)
    return engine


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest revision (``migrate.py``); (revision before,
    revision now). StoreError for a database this lineqc cannot use."""
    from . import migrate  # Alembic: imported only where a database is opened

    try:
        return migrate.upgrade(engine)
    except migrate.UnknownRevision as exc:
        raise StoreError(
            f"review database {engine.url!r}: its schema is at revision {exc}, which this "
            f"lineqc does not know (a newer lineqc made it; this one reaches {migrate.head()})"
        ) from None
    except Exception as exc:  # the driver's error names host, file or permission
        raise StoreError(f"review database {engine.url!r}: {exc}") from None


def default_images_dir(db: str) -> Path:
    """Beside an SQLite file (``review.db`` -> ``review-images/``); else ./review-images."""
    url = make_url(normalize_url(db))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database))
        return path.with_name(f"{path.stem}-images")
    return Path("review-images").resolve()


class Store:
    """The database and the image folder together; what every review command opens."""

    def __init__(self, db: str, images: Path | str | None = None) -> None:
        self.url = normalize_url(db)
        self.engine = open_engine(db)
        self.images = Path(images) if images is not None else default_images_dir(db)
        self.images.mkdir(parents=True, exist_ok=True)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self.sessions.begin() as s:
            yield s

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A unit of work that reads and then writes on what it read (the last review slot
        of a frame): the frame rows it locks are its own until it commits. PostgreSQL locks
        them with ``get_frame(..., lock=True)``; SQLite ignores that, and pysqlite would start
        the transaction only at the first write, after the reads, so two inspectors could
        both see the slot free: here the write lock is taken first (``BEGIN IMMEDIATE``)."""
        with self.sessions.begin() as s:
            if self.engine.dialect.name == "sqlite":
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # ---- images -------------------------------------------------------------------------

    def _stored_file(self, sha256: str, suffix: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"not an image id: {sha256[:80]!r}")
        return self.images / sha256[:2] / f"{sha256}{suffix}"

    def image_path(self, sha256: str) -> Path:
        """The stored file of an image; refuses anything that is not a sha256 (traversal)."""
        return self._stored_file(sha256, ".jpg")

    def defect_map_path(self, image_sha256: str) -> Path:
        """The defect map stored with an image (named by the image's sha256)."""
        return self._stored_file(image_sha256, DEFECT_MAP_SUFFIX)

    def _put_new(self, files: dict[Path, bytes]) -> None:
        # Durably (fsync, then an atomic rename), all together; a file already there is kept.
        new = [(path, data) for path, data in files.items() if not path.exists()]
        for folder in {path.parent for path, _ in new}:
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_many(new)

    def _files_of(self, sample: Sample, image_sha256: str | None) -> dict[Path, bytes]:
        """The files a sample brings: its image and, with one, its defect map."""
        if sample.image is None or image_sha256 is None:
            return {}
        files = {self.image_path(image_sha256): sample.image.jpeg_bytes()}
        if sample.defect_map is not None:  # no image: nothing to overlay
            files[self.defect_map_path(image_sha256)] = sample.defect_map.png_bytes()
        return files

    def put_image(self, data: bytes) -> str:
        """Store JPEG bytes by content; their sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self._put_new({self.image_path(digest): data})
        return digest

    def put_defect_map(self, image_sha256: str, png: bytes) -> None:
        """Store a frame's defect map (PNG bytes) beside its image."""
        self._put_new({self.defect_map_path(image_sha256): png})

    # ---- frames -------------------------------------------------------------------------

    def add_sample(self, sample: Sample, received_at: float | None = None) -> Outcome:
        """Store one wire-format sample (see ``add_samples``)."""
        return self.add_samples([sample], received_at)[0]

    def add_samples(
        self, samples: Sequence[Sample], received_at: float | None = None
    ) -> list[Outcome]:
        """Store wire-format samples, once per frame id: a frame id already stored (or met
        earlier in ``samples``) is a duplicate when its content is the same, a conflict when
        not (the first is kept). The new frames' files are written durably together, then
        their rows are committed in one transaction: a batch costs about one sample."""
        values = []
        for sample in samples:
            jpeg = sample.image.jpeg_bytes() if sample.image else None
            values.append(_frame_values(sample, hashlib.sha256(jpeg).hexdigest() if jpeg else None))
        ids = {v["frame_id"] for v in values}
        with self.session() as s:
            stored = (
                {
                    row.frame_id: {key: getattr(row, key) for key in values[0]}
                    for row in s.scalars(select(Frame).where(Frame.frame_id.in_(ids)))
                }
                if values
                else {}
            )
            share = float(get_setting(s, "double_review_share"))
        outcomes: list[Outcome] = []
        files: dict[Path, bytes] = {}
        frames: list[Frame] = []
        now = time.time() if received_at is None else received_at
        for sample, v in zip(samples, values, strict=True):
            first = stored.get(v["frame_id"])
            if first is not None:
                outcomes.append(Outcome.DUPLICATE if first == v else Outcome.CONFLICT)
                continue
            stored[v["frame_id"]] = v
            files |= self._files_of(sample, v["image_sha256"])
            double = in_share(sample.frame_id, share)
            frames.append(Frame(**v, received_at=now, required_reviews=2 if double else 1))
            outcomes.append(Outcome.STORED)
        self._put_new(files)
        try:
            with self.session() as s:
                s.add_all(frames)
        except IntegrityError:  # another collector stored one between our check and insert
            if len(samples) == 1:
                with self.session() as s:
                    return [_existing_outcome(s, values[0]) or Outcome.DUPLICATE]
            return [self.add_sample(sample, received_at) for sample in samples]
        return outcomes

    def add_reject(self, topic: str, reason: str, size: int) -> None:
        with self.session() as s:
            s.add(Reject(topic=topic[:300], reason=reason, size=size, received_at=time.time()))


def _frame_values(sample: Sample, image_sha256: str | None) -> dict[str, Any]:
    """The frames columns a sample sets: its content, compared to tell a redelivery from
    another frame under the same id."""
    image = sample.image
    return {
        "frame_id": sample.frame_id,
        "why": sample.why,
        "device": sample.device,
        "site": sample.site,
        "line": sample.line,
        "camera": sample.camera,
        "seq": sample.seq,
        "ts": sample.ts,
        "model_version": sample.model_version,
        "classes": list(sample.classes),
        "probabilities": list(sample.probabilities),
        "verdict": sample.verdict,
        "predicted": sample.label,
        "confidence": sample.confidence,
        "reason": sample.reason,
        "image_sha256": image_sha256,
        "image_width": image.width if image else None,
        "image_height": image.height if image else None,
        "image_scale": image.scale if image else None,
        "image_error": sample.image_error,
    }


def _existing_outcome(s: Session, values: dict[str, Any]) -> Outcome | None:
    """DUPLICATE or CONFLICT when the frame id is stored already; None when it is not."""
    row = s.scalar(select(Frame).where(Frame.frame_id == values["frame_id"]))
    if row is None:
        return None
    same = all(getattr(row, key) == value for key, value in values.items())
    return Outcome.DUPLICATE if same else Outcome.CONFLICT


MAX_PK = 2**31 - 1  # frames.id is an INTEGER: 32 bits on PostgreSQL


def get_frame(s: Session, pk: int, lock: bool = False) -> Frame | None:
    """The frame with primary key ``pk`` (``lock``: for update), None for any other number,
    one past the column's range included (the database would refuse it: a 500, not a 404)."""
    if not 1 <= pk <= MAX_PK:
        return None
    return s.get(Frame, pk, with_for_update=lock)


def in_share(key: str, share: float) -> bool:
    """A stable choice of ``share`` of all keys (the same on every collector and restart)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < share


def get_setting(s: Session, key: str) -> Any:
    row = s.get(Setting, key)
    return DEFAULT_SETTINGS[key] if row is None else row.value


def set_setting(s: Session, key: str, value: Any) -> None:
    if key not in DEFAULT_SETTINGS:
        raise StoreError(f"unknown setting {key!r} (known: {', '.join(DEFAULT_SETTINGS)})")
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=value))
    else:
        row.value = value
