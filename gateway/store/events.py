"""Carrier webhook events, stored before they are answered and applied afterwards.

One row per (carrier fax id, status): the carrier retries a webhook it thinks was not received,
and the unique key turns every retry into a no-op. The events worker
(gateway/callbacks/events.py) claims the unprocessed rows in arrival order, a batch at a time,
and marks them processed once their effects are committed (a batch's marks in one transaction).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.queue.schedule import crash_message
from gateway.store.claims import QueueTable, claim, next_due
from gateway.store.db import transaction

EVENTS = QueueTable("events", touched=None)


@dataclass(frozen=True)
class Event:
    id: int
    carrier_id: str
    status: str
    direction: str
    payload: dict[str, Any]
    received_at: float
    processed_at: float | None
    attempts: int
    error: str | None
    pickups: int = 0
    next_attempt_at: float = 0.0


def normalize_status(status: str) -> str:
    """The form a status is stored and deduplicated in ("Delivered " and "delivered" are one)."""
    return status.strip().lower()


def record_event(
    conn: sqlite3.Connection,
    carrier_id: str,
    status: str,
    direction: str,
    payload: dict[str, Any],
    now: float,
) -> int | None:
    """Store an event; its row id, or None when the same (fax, status) is already stored."""
    with transaction(conn):
        return insert_event(conn, carrier_id, status, direction, payload, now)


_INSERT = (
    "INSERT INTO events (carrier_id, status, direction, payload, received_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


def _row(
    carrier_id: str, status: str, direction: str, payload: dict[str, Any], now: float
) -> tuple[Any, ...]:
    """An event's values for _INSERT: its key in the form the unique index compares."""
    return (
        carrier_id,
        normalize_status(status),
        direction.strip().lower(),
        json.dumps(payload, sort_keys=True),
        now,
    )


def insert_event(
    conn: sqlite3.Connection,
    carrier_id: str,
    status: str,
    direction: str,
    payload: dict[str, Any],
    now: float,
) -> int | None:
    """record_event inside the caller's transaction (store/commit.py)."""
    cursor = conn.execute(
        f"{_INSERT} ON CONFLICT (carrier_id, status) DO NOTHING",
        _row(carrier_id, status, direction, payload, now),
    )
    return cursor.lastrowid if cursor.rowcount == 1 else None


def record_or_reopen_event(
    conn: sqlite3.Connection,
    carrier_id: str,
    status: str,
    direction: str,
    payload: dict[str, Any],
    now: float,
) -> bool:
    """Store an event, or make an already processed one with the same key due again.

    For the reconciler: it only calls this for a fax our store still has unfinished, so an
    earlier event with this status evidently did not take effect (its verification saw an
    older state, say) and must be applied again. True when something is now due.
    """
    with transaction(conn):
        cursor = conn.execute(
            f"{_INSERT} ON CONFLICT (carrier_id, status) DO UPDATE SET"
            " processed_at = NULL, attempts = 0, pickups = 0, next_attempt_at = 0, error = NULL,"
            " payload = excluded.payload"
            " WHERE events.processed_at IS NOT NULL",
            _row(carrier_id, status, direction, payload, now),
        )
        return cursor.rowcount == 1


def pending_events(conn: sqlite3.Connection, limit: int = 100) -> list[Event]:
    """Unprocessed events, oldest first."""
    rows = conn.execute(
        "SELECT * FROM events WHERE processed_at IS NULL ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    return [_event(row) for row in rows]


def events_of(conn: sqlite3.Connection, carrier_id: str) -> list[Event]:
    rows = conn.execute(
        "SELECT * FROM events WHERE carrier_id = ? ORDER BY id", (carrier_id,)
    ).fetchall()
    return [_event(row) for row in rows]


@dataclass(frozen=True)
class Processed:
    """How one event ended, for `mark_events_processed`: applied (`payload`, the carrier's
    record that was acted upon) or dropped (`error` says why)."""

    event_id: int
    error: str | None = None
    payload: dict[str, Any] | None = None


def mark_processed(
    conn: sqlite3.Connection,
    event_id: int,
    now: float,
    *,
    error: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """The event's effect is committed (or it was dropped, with `error` saying why).

    `payload`, when given, replaces the stored one: after verification it is the carrier's own
    record, which is what was acted upon.
    """
    mark_events_processed(conn, [Processed(event_id, error, payload)], now)


def mark_events_processed(
    conn: sqlite3.Connection, processed: Sequence[Processed], now: float
) -> None:
    """mark_processed for several events, in one transaction."""
    with transaction(conn):
        for item in processed:
            if item.payload is None:
                conn.execute(
                    "UPDATE events SET processed_at = ?, error = ? WHERE id = ?",
                    (now, item.error, item.event_id),
                )
            else:
                conn.execute(
                    "UPDATE events SET processed_at = ?, error = ?, payload = ? WHERE id = ?",
                    (now, item.error, json.dumps(item.payload, sort_keys=True), item.event_id),
                )


def claim_events(
    conn: sqlite3.Connection, now: float, limit: int, max_pickups: int
) -> tuple[list[Event], list[Event]]:
    """(claimed, held): up to `limit` unprocessed events due at `now` in arrival order, each
    with a pickup counted; those whose applying was interrupted `max_pickups` times are set
    aside instead (processed, with the reason as their error: the reconciler still covers their
    fax).

    A batch shares its pickups: a crash while applying one event charges every event claimed
    with it. So an event that was interrupted before (pickups > 0) is claimed alone, and a
    batch holds only events never interrupted: an event that kills the process charges its
    batch-mates once, after which each is claimed alone, and only the culprit goes on to be
    held. With max_pickups 1 that single charge would hold the innocent: every claim is of
    one event then.
    """
    with transaction(conn, row_locks=True):
        first = conn.execute(
            "SELECT pickups FROM events WHERE processed_at IS NULL AND next_attempt_at <= ?"
            " ORDER BY id LIMIT 1",
            (now,),
        ).fetchone()
        alone = max_pickups <= 1 or first is None or first["pickups"] > 0
        claimed = claim(
            conn,
            EVENTS,
            where="processed_at IS NULL" if alone else "processed_at IS NULL AND pickups = 0",
            params=(),
            now=now,
            limit=1 if alone else limit,
            max_pickups=max_pickups,
            order="id",
        )
        for row in claimed.held:
            conn.execute(
                "UPDATE events SET processed_at = ?, error = ? WHERE id = ?",
                (now, crash_message(row["pickups"], "applying the event"), row["id"]),
            )
    return [_event(row) for row in claimed.rows], [_event(row) for row in claimed.held]


def defer_event(
    conn: sqlite3.Connection, event_id: int, error: str, due_at: float, now: float
) -> int:
    """Count a failed attempt at applying the event and make it due at `due_at`; returns the
    attempts so far."""
    with transaction(conn):
        row = conn.execute(
            "UPDATE events SET attempts = attempts + 1, error = ?, next_attempt_at = ?,"
            " pickups = 0 WHERE id = ? RETURNING attempts",
            (error, due_at, event_id),
        ).fetchone()
    return int(row["attempts"]) if row is not None else 0


def next_event_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest unprocessed event is due."""
    return next_due(conn, EVENTS, where="processed_at IS NULL", params=())


def _event(row: sqlite3.Row) -> Event:
    try:
        payload = json.loads(row["payload"])
    except ValueError:
        payload = {}
    return Event(
        id=row["id"],
        carrier_id=row["carrier_id"],
        status=row["status"],
        direction=row["direction"],
        payload=payload if isinstance(payload, dict) else {},
        received_at=row["received_at"],
        processed_at=row["processed_at"],
        attempts=row["attempts"],
        error=row["error"],
        pickups=row["pickups"],
        next_attempt_at=row["next_attempt_at"],
    )
