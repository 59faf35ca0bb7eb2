"""Tables created on first use by several processes at once.

SQLAlchemy's `create_all` checks for each table, then creates the missing ones: two stream
workers starting together on a fresh database (SQLite or PostgreSQL) can both see a table
missing and one of them fails with "table ... already exists". A failed attempt is tried
again; the check then finds the table the other process made.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

ATTEMPTS = 5


def create_tables(meta: sa.MetaData, engine: sa.engine.Engine) -> None:
    """`meta.create_all(engine)`, safe against other processes creating the same tables."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            meta.create_all(engine)
            return
        except sa.exc.SQLAlchemyError:
            if attempt == ATTEMPTS:
                raise  # not a race: the caller names the database
            time.sleep(0.05 * attempt)
