"""Schema migrations of the review store (Alembic), on SQLite and PostgreSQL: a new database,
one made before migrations began, one from a newer lineqc, the `lineqc review migrate`
command; and the last review slot of a frame taken by two inspectors at once on SQLite."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from lineqc.edge.wire import Sample
from lineqc.review.migrate import head
from lineqc.review.queue import QueueError, record_answer
from lineqc.review.store import (
    Base,
    Frame,
    Review,
    Store,
    StoreError,
    User,
    normalize_url,
    set_setting,
)

# The tables as they were before migrations began: no review_history, no monitoring.
PRE_HISTORY = [
    t
    for name, t in Base.metadata.tables.items()
    if name != "review_history" and not name.startswith(("monitor_", "fleet_"))
]


def schema_diff(db: str) -> list[object]:
    """What differs between the database and the models (empty: migrations == models)."""
    engine = sqlalchemy.create_engine(normalize_url(db))
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def revision(db: str) -> str | None:
    engine = sqlalchemy.create_engine(normalize_url(db))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_a_new_database_gets_the_newest_revision_and_the_models_schema(
    db_url: str, tmp_path: Path
) -> None:
    Store(db_url, tmp_path / "images").close()
    assert revision(db_url) == head() == "0003"
    assert schema_diff(db_url) == []


def test_a_database_from_before_migrations_is_adopted_with_its_rows(
    db_url: str, tmp_path: Path, make_sample: Callable[..., Sample]
) -> None:
    """Tables made by create_all before review_history existed, with a frame and a user: the
    first revision creates only what is missing and stamps the database."""
    engine = sqlalchemy.create_engine(normalize_url(db_url))
    Base.metadata.create_all(engine, tables=PRE_HISTORY)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(User), [dict(name="ann", password_hash="-", created_at=1.0)])
    engine.dispose()
    assert revision(db_url) is None
    store = Store(db_url, tmp_path / "images")
    try:
        assert store.add_sample(make_sample("dev1-cam0-1-1"))
        with store.session() as s:
            assert s.scalar(select(User.name)) == "ann"
            assert s.scalar(select(func.count()).select_from(Frame)) == 1
        assert inspect(store.engine).has_table("review_history")
    finally:
        store.close()
    assert revision(db_url) == head()
    assert schema_diff(db_url) == []


def test_a_database_at_the_first_revision_gets_the_monitoring_tables_with_its_rows(
    db_url: str, tmp_path: Path, make_sample: Callable[..., Sample]
) -> None:
    """0001 -> 0002: a review store from before fleet monitoring keeps its frames and gains
    the monitor_* tables, as the models define them."""
    from alembic import command

    from lineqc.review import migrate

    engine = sqlalchemy.create_engine(normalize_url(db_url))
    with engine.connect() as conn:
        command.upgrade(migrate._config(conn), "0001")
        conn.commit()
    engine.dispose()
    assert revision(db_url) == "0001"
    engine = sqlalchemy.create_engine(normalize_url(db_url))
    with engine.begin() as conn:  # a frame in 0001's tables
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO frames (frame_id, why, device, site, line, camera, seq, ts, "
                "model_version, classes, probabilities, verdict, predicted, confidence, "
                "received_at, required_reviews) VALUES ('dev1-cam0-1-1', 'audit', 'dev1', "
                "'site1', 'line1', 'cam0', 1, 1.0, 'm1', '[\"ok\"]', '[1.0]', 'ok', 'ok', "
                "1.0, 1.0, 1)"
            )
        )
    engine.dispose()
    store = Store(db_url, tmp_path / "images")
    try:
        assert {"monitor_rollups", "monitor_alarms"} <= set(inspect(store.engine).get_table_names())
        with store.session() as s:
            assert s.scalar(select(Frame.frame_id)) == "dev1-cam0-1-1"
    finally:
        store.close()
    assert revision(db_url) == head() == "0003"
    assert schema_diff(db_url) == []


def test_a_database_from_a_newer_lineqc_is_refused(sqlite_db_url: str, tmp_path: Path) -> None:
    Store(sqlite_db_url, tmp_path / "images").close()
    engine = sqlalchemy.create_engine(sqlite_db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    engine.dispose()
    with pytest.raises(StoreError, match="at revision 0099, which this lineqc does not know"):
        Store(sqlite_db_url, tmp_path / "images")


def test_the_migrate_command_says_where_the_database_stands(lineqc, pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    Base.metadata.create_all(engine, tables=PRE_HISTORY)
    engine.dispose()
    first = lineqc("review", "migrate", "--db", pg_url)
    assert f": upgraded from no revision to {head()}" in first.stdout
    again = lineqc("review", "migrate", "--db", pg_url)
    assert f": at revision {head()}, the newest" in again.stdout
    assert schema_diff(pg_url) == []


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'review.db'}"


def _open_at_once(db: str, images: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))
    Store(db, images).close()


def test_two_commands_opening_a_new_database_at_once_both_succeed(tmp_path: Path) -> None:
    # A race: one round in fifty failed on the journal mode switch before it was retried.
    fork = multiprocessing.get_context("fork")
    for round_ in range(25):
        db = f"sqlite:///{tmp_path / f'review{round_}.db'}"
        start = time.time() + 0.3
        procs = [
            fork.Process(target=_open_at_once, args=(db, str(tmp_path / "i"), start))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"round {round_}"
        assert revision(db) == head()


def _answer_all(db: str, images: str, user_id: int, pks: list[int], together: Any) -> None:
    """One inspector's browser: answer every frame, each at the moment the other does."""
    store = Store(db, images)
    for pk in pks:
        together.wait(30)
        try:
            record_answer(store, user_id, pk, "ok")
        except QueueError as exc:  # the other inspector took it: 409, as the app answers
            assert exc.status == 409, exc
    store.close()


def test_the_last_review_slot_cannot_be_taken_twice_on_sqlite(
    sqlite_db_url: str, tmp_path: Path, make_sample: Callable[..., Sample]
) -> None:
    """Two inspector processes answer the same 60 single-review frames at the same moment:
    each frame gets exactly one answer (the other inspector is told it no longer waits)."""
    store = Store(sqlite_db_url, tmp_path / "images")
    with store.session() as s:
        set_setting(s, "double_review_share", 0.0)
        users = [User(name=n, password_hash="-", created_at=1.0) for n in ("ann", "bob")]
        s.add_all(users)
    for i in range(60):
        assert store.add_sample(make_sample(f"dev1-cam0-1-{i}"))
    with store.session() as s:
        pks = list(s.scalars(select(Frame.id).order_by(Frame.id)))
        user_ids = [u.id for u in s.scalars(select(User).order_by(User.name))]
    store.close()
    fork = multiprocessing.get_context("fork")
    args = (sqlite_db_url, str(tmp_path / "images"))
    together = fork.Barrier(2)
    procs = [fork.Process(target=_answer_all, args=(*args, u, pks, together)) for u in user_ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store(sqlite_db_url, tmp_path / "images").session() as s:
        answers = s.execute(select(Review.frame_pk, func.count()).group_by(Review.frame_pk)).all()
        per_user = s.execute(select(Review.user_id, func.count()).group_by(Review.user_id)).all()
    assert sorted(pk for pk, _ in answers) == pks
    assert all(n == 1 for _, n in answers), [a for a in answers if a[1] > 1]
    assert len(per_user) == 2, per_user  # both raced for real: each won some frames
