"""Inbound faxes the carrier announced, from announcement until their mail is out (table `inbound`).

States, each owned by one step of the inbound worker (gateway/inbound/worker.py):
- announced: the carrier told us (webhook or reconciler); the document is not here yet.
- stored: the document is on disk under data.dir/inbound/; the mail is not queued yet.
- archived: its copy is in the inbound archive (inbound.archive_dir / archive_s3_prefix); the
  mail is not queued yet. Without an archive configured, a fax goes from stored to mailed.
- mailed: the mail is queued in the outbox; the file stays until the relay took the mail.
- dead: the mail could not be delivered after inbound.max_attempts (or the document could not
  be fetched, or a step was interrupted queue.max_pickups times: the inbound queue's "held");
  the file, if any, is in data.dir/dead-letter/ for an operator.

Steps claim their work with `claim_inbound` (the crash guard of gateway/store/claims.py), which
counts the attempt before it starts, as Postfix counts a delivery before making it: a
document that kills the process is not tried again at once, nor forever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.store import blobs
from gateway.store.blobs import File
from gateway.store.claims import QueueTable, claim, next_due
from gateway.store.db import transaction

INBOUND = QueueTable("inbound")


class InboundState(StrEnum):
    ANNOUNCED = "announced"
    STORED = "stored"
    ARCHIVED = "archived"
    MAILED = "mailed"
    DEAD = "dead"


@dataclass(frozen=True)
class InboundFax:
    id: int
    carrier_id: str
    state: InboundState
    from_number: str
    to_number: str
    pages: int | None
    duration: int | None
    fax_time: str | None
    media_url: str | None
    file_path: str | None
    attempts: int
    next_attempt_at: float
    error: str | None
    created_at: float
    updated_at: float
    pickups: int = 0


def announce_inbound(
    conn: sqlite3.Connection,
    *,
    carrier_id: str,
    from_number: str,
    to_number: str,
    pages: int | None,
    duration: int | None,
    fax_time: str | None,
    media_url: str | None,
    now: float,
) -> int | None:
    """Record an announced inbound fax; its id, or None if this carrier id is already known."""
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO inbound (carrier_id, state, from_number, to_number, pages, duration,"
            " fax_time, media_url, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (carrier_id) DO NOTHING",
            (
                carrier_id,
                InboundState.ANNOUNCED,
                from_number,
                to_number,
                pages,
                duration,
                fax_time,
                media_url,
                now,
                now,
            ),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None


def get_inbound(conn: sqlite3.Connection, inbound_id: int) -> InboundFax | None:
    row = conn.execute("SELECT * FROM inbound WHERE id = ?", (inbound_id,)).fetchone()
    return None if row is None else _inbound(row)


def inbound_by_carrier_id(conn: sqlite3.Connection, carrier_id: str) -> InboundFax | None:
    row = conn.execute("SELECT * FROM inbound WHERE carrier_id = ?", (carrier_id,)).fetchone()
    return None if row is None else _inbound(row)


def claim_inbound(
    conn: sqlite3.Connection,
    state: InboundState | tuple[InboundState, ...],
    now: float,
    *,
    max_pickups: int,
    lease: Callable[[int], float],
    limit: int = 1,
) -> tuple[list[InboundFax], list[InboundFax]]:
    """(claimed, held) faxes in `state` (or any of several) due at `now`: claimed ones have
    an attempt and a pickup counted and are due again `lease(pickups)` from now unless their
    step records an outcome; held ones were interrupted `max_pickups` times, for the worker to
    dead-letter."""
    states = tuple(InboundState(s) for s in (state if isinstance(state, tuple) else (state,)))
    with transaction(conn, row_locks=True):
        claimed = claim(
            conn,
            INBOUND,
            where=f"state IN ({', '.join('?' * len(states))})",
            params=states,
            now=now,
            limit=limit,
            max_pickups=max_pickups,
            order="next_attempt_at, id",
            lease=lease,
            count_attempt=True,
        )
    return [_inbound(row) for row in claimed.rows], [_inbound(row) for row in claimed.held]


def next_inbound_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest announced, stored or archived fax is due."""
    return next_due(
        conn,
        INBOUND,
        where="state IN (?, ?, ?)",
        params=(InboundState.ANNOUNCED, InboundState.STORED, InboundState.ARCHIVED),
    )


def inbound_in_state(conn: sqlite3.Connection, state: InboundState) -> list[InboundFax]:
    rows = conn.execute("SELECT * FROM inbound WHERE state = ? ORDER BY id", (state,)).fetchall()
    return [_inbound(row) for row in rows]


def mark_stored(
    conn: sqlite3.Connection,
    inbound_id: int,
    file_path: str,
    now: float,
    files: Sequence[File] = (),
) -> None:
    """The document is durably on disk (and `files`, the document, in the store where it keeps
    shared copies); the mail step starts with a fresh attempt count."""
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET state = ?, file_path = ?, attempts = 0, pickups = 0,"
            " next_attempt_at = 0, error = NULL, updated_at = ? WHERE id = ?",
            (InboundState.STORED, file_path, now, inbound_id),
        )
        blobs.put(conn, files, now)


def mark_archived(conn: sqlite3.Connection, inbound_id: int, now: float) -> None:
    """The archive has its copy; the mail step starts with a fresh attempt count."""
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET state = ?, attempts = 0, pickups = 0, next_attempt_at = 0,"
            " error = NULL, updated_at = ? WHERE id = ? AND state = ?",
            (InboundState.ARCHIVED, now, inbound_id, InboundState.STORED),
        )


def mark_mailed(conn: sqlite3.Connection, inbound_id: int, now: float) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET state = ?, attempts = 0, pickups = 0, next_attempt_at = 0,"
            " error = NULL, updated_at = ? WHERE id = ?",
            (InboundState.MAILED, now, inbound_id),
        )


def defer_inbound(
    conn: sqlite3.Connection,
    inbound_id: int,
    error: str,
    next_attempt_at: float,
    now: float,
    *,
    tried: bool = True,
) -> int:
    """Try again at `next_attempt_at`; returns the attempts so far.

    `tried=False`: nothing was attempted (no route for the number), so the attempt its claim
    counted is taken back.
    """
    with transaction(conn):
        row = conn.execute(
            "UPDATE inbound SET attempts = max(attempts - ?, 0), next_attempt_at = ?, error = ?,"
            " pickups = 0, updated_at = ? WHERE id = ? RETURNING attempts",
            (0 if tried else 1, next_attempt_at, error, now, inbound_id),
        ).fetchone()
    return int(row["attempts"]) if row is not None else 0


def set_file_path(
    conn: sqlite3.Connection, inbound_id: int, file_path: str | None, now: float
) -> None:
    """The document moved (dead letter, requeue) or was removed after its mail went out
    (None: its shared copy goes too)."""
    with transaction(conn):
        if file_path is None and blobs.shares_files(conn):
            row = conn.execute(
                "SELECT file_path FROM inbound WHERE id = ?", (inbound_id,)
            ).fetchone()
            if row is not None:
                blobs.forget(conn, [row["file_path"]])
        conn.execute(
            "UPDATE inbound SET file_path = ?, updated_at = ? WHERE id = ?",
            (file_path, now, inbound_id),
        )


def mark_dead(
    conn: sqlite3.Connection, inbound_id: int, file_path: str | None, error: str, now: float
) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET state = ?, file_path = ?, error = ?, pickups = 0, updated_at = ?"
            " WHERE id = ?",
            (InboundState.DEAD, file_path, error, now, inbound_id),
        )


def revive(
    conn: sqlite3.Connection,
    inbound_id: int,
    state: InboundState,
    file_path: str | None,
    now: float,
) -> None:
    """Put a dead fax back in `state` with a fresh attempt count (the queue tools' requeue)."""
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET state = ?, file_path = ?, attempts = 0, pickups = 0,"
            " next_attempt_at = 0, error = NULL, updated_at = ? WHERE id = ?",
            (state, file_path, now, inbound_id),
        )


def _inbound(row: sqlite3.Row) -> InboundFax:
    return InboundFax(
        id=row["id"],
        carrier_id=row["carrier_id"],
        state=InboundState(row["state"]),
        from_number=row["from_number"],
        to_number=row["to_number"],
        pages=row["pages"],
        duration=row["duration"],
        fax_time=row["fax_time"],
        media_url=row["media_url"],
        file_path=row["file_path"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        pickups=row["pickups"],
    )


def set_media_url(conn: sqlite3.Connection, inbound_id: int, media_url: str, now: float) -> None:
    """A fresh media link from the carrier (the stored one may have expired)."""
    with transaction(conn):
        conn.execute(
            "UPDATE inbound SET media_url = ?, updated_at = ? WHERE id = ?",
            (media_url, now, inbound_id),
        )


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Inbound faxes per state, for the queue-depth metric."""
    rows = conn.execute("SELECT state, count(*) FROM inbound GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}
