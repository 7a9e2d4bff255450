"""Alembic's environment for the review store: run on the connection ``lineqc.review.migrate``
passes in (``config.attributes["connection"]``), inside the transaction it holds."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
)
with context.begin_transaction():
    context.run_migrations()
