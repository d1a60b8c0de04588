"""Small named values the gateway keeps across restarts (table `meta`).

Used for bookmarks such as the reconciler's newest inbound fax already looked at. Values are
text; callers that need structure store JSON.
"""

from __future__ import annotations

import sqlite3

from gateway.store.db import transaction


def get_meta(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row["value"])


def set_meta(conn: sqlite3.Connection, name: str, value: str) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )


def delete_meta(conn: sqlite3.Connection, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM meta WHERE name = ?", (name,))
