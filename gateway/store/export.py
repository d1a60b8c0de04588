"""Copy a SQLite store into an empty PostgreSQL one (`fax-gateway store export`).

For moving a gateway onto PostgreSQL while it is stopped: both stores are migrated to this
program's schema first (so their tables are the same), every row of every table is copied in
one PostgreSQL transaction (all or nothing), ids included, and the identity sequences are moved
past the copied ids. Paths in the rows (spool, documents, outbox) still name files in the
exporting node's data.dir: start the first PostgreSQL node on that data.dir.
"""

from __future__ import annotations

import sqlite3

from gateway.store.db import StoreError, transaction
from gateway.store.postgres import VERSION_TABLE, PgConnection, reset_identities

_BATCH = 500


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    """The store's tables, parents before children (jobs before faxes, for the foreign key)."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    ).fetchall()
    names = [str(row[0]) for row in rows]
    return sorted(names, key=lambda name: (name != "jobs", name))


def copy_store(source: sqlite3.Connection, target: PgConnection) -> dict[str, int]:
    """Every row of `source` into `target`, which must hold no rows yet; rows per table."""
    tables = sqlite_tables(source)
    for table in tables:
        if target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
            raise StoreError(f"the PostgreSQL store is not empty (table {table} has rows)")
    copied: dict[str, int] = {}
    with transaction(target):  # type: ignore[arg-type]
        for table in tables:
            if table == VERSION_TABLE:
                continue
            columns = [str(row[1]) for row in source.execute(f"PRAGMA table_info({table})")]
            names = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            insert = f"INSERT INTO {table} ({names}) VALUES ({marks})"
            cursor = source.execute(f"SELECT {names} FROM {table}")
            count = 0
            while batch := cursor.fetchmany(_BATCH):
                target.executemany(insert, [tuple(row) for row in batch])
                count += len(batch)
            copied[table] = count
        reset_identities(target)
    return copied
