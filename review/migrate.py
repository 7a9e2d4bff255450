"""Schema migrations of the review store (Alembic; the revisions in ``migrations/versions``).

Every command that opens the store brings its database to the newest revision first
(``upgrade``): a new database gets every table, one made before migrations began (by
``create_all``) is adopted by the first revision, which creates only the tables it lacks,
and a later schema change is a new revision applied the same way. ``lineqc review migrate``
does the same on its own and says where the database stands. A database at a revision this
lineqc does not know (made by a newer one) is refused rather than guessed at.

The upgrade runs in one transaction that excludes any other: on PostgreSQL behind an
advisory lock, on SQLite as ``BEGIN IMMEDIATE`` (its DDL is transactional), so a collector
and the web app starting together on a new database do not both create its tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

HERE = Path(__file__).parent / "migrations"
_LOCK_ID = 0x6C696E65_71632D72  # pg_advisory_xact_lock key: "lineqc-r"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this lineqc knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "no migration revisions"
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


class UnknownRevision(Exception):
    """The database is at a revision this lineqc does not have."""


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the newest revision; (revision before, revision now)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would defer; take the lock now
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")
        before = current(conn)
        scripts = ScriptDirectory.from_config(_config())
        if before is not None and before not in {s.revision for s in scripts.walk_revisions()}:
            raise UnknownRevision(before)
        if before != scripts.get_current_head():
            command.upgrade(_config(conn), "head")
        conn.commit()
    return before, head()
