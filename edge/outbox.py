"""The durable outbox: an on-disk SQLite queue of messages waiting for the broker's PUBACK.

A message is committed here (WAL journal, ``synchronous=FULL``: on disk when the commit
returns) before it is published, and deleted only once the broker acknowledged it. A killed
process or a broker outage therefore delays delivery and never loses a committed message;
duplicates are possible (at-least-once).

The queue is bounded by the bytes of its payloads. At the bound the oldest messages of the
lowest priority go first (per-frame results before review samples), every drop is counted
(and the counts survive restarts), and ``at_bound`` tells status and telemetry to say so.

A full disk is the same bound, reached early: a batch the disk refuses is dropped and
counted as such (the counts are saved with the next commit the disk takes), ``at_bound``
says so, and the device keeps inspecting. Nothing else can be written meanwhile (SQLite's
journal needs room even to delete), so deliveries are deleted once the disk has room again
and sent again until then (at-least-once).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lineqc.errors import LineqcError

log = logging.getLogger("lineqc.edge.outbox")
PRIORITY_RESULT = 0
PRIORITY_SAMPLE = 10
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority DESC, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
BOUND_MEMORY_S = 60.0  # at_bound stays true this long after the last drop
SQLITE_FULL, SQLITE_IOERR = 13, 10  # primary result codes: the disk refused a write


@dataclass(frozen=True)
class OutMessage:
    kind: str  # "result" or "sample"
    topic: str
    payload: bytes
    key: str | None = None  # frame id, for people reading the file
    qos: int = 1

    @property
    def priority(self) -> int:
        return PRIORITY_SAMPLE if self.kind == "sample" else PRIORITY_RESULT


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    key: str | None
    topic: str
    payload: bytes
    qos: int


class OutboxError(LineqcError):
    """An outbox file that cannot be opened; the message names it and the reason."""


class Outbox:
    def __init__(self, path: Path | str, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _open(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"outbox {self.path}: cannot open it ({exc})") from None
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self.depth, self.bytes = (int(v) for v in row.fetchone())
        self._last_drop = 0.0
        self._unsaved_drops: dict[str, int] = {}  # counted while the disk refused to save them

    # ---- writing ---------------------------------------------------------------------------

    def add_many(self, messages: Iterable[OutMessage]) -> list[int]:
        """Commit messages (one transaction, durable on return); their row ids, in order.

        A message dropped at the bound (a result that cannot displace anything), or in a batch
        the full disk refused, gets id -1; both are counted as dropped.
        """
        batch = list(messages)
        with self._lock:
            try:
                ids, drops = self._insert(batch)
            except sqlite3.DatabaseError as exc:
                self._rollback()
                if not _disk_refused(exc):
                    raise
                ids, drops = self._disk_full(batch, exc)
        if drops:
            self._last_drop = time.monotonic()
        return ids

    def _insert(self, batch: list[OutMessage]) -> tuple[list[int], dict[str, int]]:
        ids: list[int] = []
        drops: dict[str, int] = {}
        now = time.time()
        bound = self.max_bytes
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        for msg in batch:
            size = len(msg.payload)
            if self.bytes + size > bound and not self._evict(
                cur, self.bytes + size - bound, msg.priority, drops
            ):
                drops[msg.kind] = drops.get(msg.kind, 0) + 1
                ids.append(-1)
                continue
            cur.execute(
                "INSERT INTO outbox (priority, kind, key, topic, payload, qos, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (msg.priority, msg.kind, msg.key, msg.topic, msg.payload, msg.qos, now),
            )
            ids.append(int(cur.lastrowid or 0))
            self.depth += 1
            self.bytes += size
        unsaved = self._unsaved_drops
        for kind in set(drops) | set(unsaved):
            cur.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (f"dropped_{kind}", drops.get(kind, 0) + unsaved.get(kind, 0)),
            )
        cur.execute("COMMIT")
        self._unsaved_drops = {}
        return ids, drops

    def _disk_full(
        self, batch: list[OutMessage], exc: sqlite3.DatabaseError
    ) -> tuple[list[int], dict[str, int]]:
        """The disk refused the batch: drop it, counted (logged once per full spell)."""
        drops: dict[str, int] = {}
        for msg in batch:
            drops[msg.kind] = drops.get(msg.kind, 0) + 1
        if not self._unsaved_drops:
            log.error(
                "outbox %s: the disk refused a commit (%s): messages are dropped and counted "
                "until it has room again",
                self.path,
                exc,
            )
        for kind, n in drops.items():
            self._unsaved_drops[kind] = self._unsaved_drops.get(kind, 0) + n
        return [-1] * len(batch), drops

    def _rollback(self) -> None:
        """Roll back whatever the failed transaction left (SQLite may have rolled it back
        already: a full disk does), and count again what is really stored."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._recount()

    def _evict(self, cur: sqlite3.Cursor, need: int, priority: int, drops: dict[str, int]) -> bool:
        """Delete the oldest rows of priority <= ``priority`` (lowest first) to free ``need``."""
        if need > self.max_bytes:
            return False
        rows = cur.execute(
            "SELECT id, kind, LENGTH(payload) FROM outbox WHERE priority <= ? "
            "ORDER BY priority, id",
            (priority,),
        )
        victims, freed = [], 0
        for row_id, kind, size in rows:
            if freed >= need:
                break
            victims.append((row_id, kind, size))
            freed += size
        if freed < need:
            return False
        for row_id, kind, size in victims:
            cur.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            drops[kind] = drops.get(kind, 0) + 1
            self.depth -= 1
            self.bytes -= size
        return True

    def delete(self, ids: Iterable[int]) -> int:
        """Remove acknowledged rows; returns how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                for row_id in ids:
                    got = cur.execute(
                        "DELETE FROM outbox WHERE id = ? RETURNING LENGTH(payload)", (row_id,)
                    ).fetchone()
                    if got is not None:
                        removed += 1
                        self.depth -= 1
                        self.bytes -= int(got[0])
                cur.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return removed

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self.depth, self.bytes = (int(v) for v in row.fetchone())

    # ---- reading ---------------------------------------------------------------------------

    def pending(
        self, limit: int, exclude: Iterable[int] = (), exclude_topics: Iterable[str] = ()
    ) -> list[Row]:
        """The next rows to publish: review samples first, then oldest first; not the rows
        ``exclude`` names (in flight) nor those on ``exclude_topics`` (held back)."""
        skip, topics = list(exclude), list(exclude_topics)
        terms = []
        if skip:
            terms.append(f"id NOT IN ({','.join('?' * len(skip))})")
        if topics:
            terms.append(f"topic NOT IN ({','.join('?' * len(topics))})")
        where = f"WHERE {' AND '.join(terms)}" if terms else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, kind, key, topic, payload, qos FROM outbox {where} "
                "ORDER BY priority DESC, id LIMIT ?",
                (*skip, *topics, limit),
            ).fetchall()
        return [Row(int(r[0]), r[1], r[2], r[3], bytes(r[4]), int(r[5])) for r in rows]

    def keys(self, kind: str | None = None) -> list[str]:
        with self._lock:
            sql = "SELECT key FROM outbox" + (" WHERE kind = ?" if kind else "")
            return [r[0] for r in self._db.execute(sql, (kind,) if kind else ())]

    def counters(self) -> dict[str, int]:
        with self._lock:
            saved = {k: int(v) for k, v in self._db.execute("SELECT name, value FROM counters")}
            for kind, n in self._unsaved_drops.items():
                saved[f"dropped_{kind}"] = saved.get(f"dropped_{kind}", 0) + n
            return saved

    @property
    def at_bound(self) -> bool:
        recent = self._last_drop and time.monotonic() - self._last_drop < BOUND_MEMORY_S
        return bool(recent) or self.bytes >= 0.95 * self.max_bytes

    def stats(self) -> dict[str, object]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "at_bound": self.at_bound,
            "dropped": self.counters(),
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _disk_refused(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite failed because the disk refused a write (full, or an I/O error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # Python 3.10: only the message tells
        return "disk is full" in str(exc) or "disk I/O error" in str(exc)
    return code & 0xFF in (SQLITE_FULL, SQLITE_IOERR)
