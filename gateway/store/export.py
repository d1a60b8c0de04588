"""Copy a SQLite store into an empty PostgreSQL one (`fax-gateway store export`).

For moving a gateway onto PostgreSQL while it is stopped: both stores are migrated to this
program's schema first (so their tables are the same), every row of every table is copied in
one PostgreSQL transaction (all or nothing), ids included, and the identity sequences are moved
past the copied ids. The files of unfinished work (the messages and documents of jobs not
cleaned up, outbox mails, received faxes) go into the store in the same transaction, as
their shared copies (gateway/store/blobs.py), so any node can carry on with them; the rows'
paths still name the exporting node's data.dir, which every node reads as its own.
"""

from __future__ import annotations

import sqlite3

from gateway.store import blobs
from gateway.store.db import StoreError, transaction
from gateway.store.postgres import VERSION_TABLE, PgConnection, reset_identities
from gateway.store.retention import referenced_files

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
        # One file at a time: a queue of large messages is never all in memory.
        carried = 0
        for path in sorted(referenced_files(source)):
            files = blobs.read_local([path])
            blobs.put(target, files)  # type: ignore[arg-type]
            carried += len(files)
        copied["blobs"] = carried
        reset_identities(target)
    return copied
