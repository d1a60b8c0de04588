"""Every mail the gateway sends, from queued to sent (table `outbox`).

A row is written only after its rendered message is on disk (`queue_mail` in
gateway/mailout/outbox.py), and carries a unique key chosen by the caller
(`report:<fax id>:delivered`), so a notification queued twice (a retried webhook, a restart
mid-step) is recorded once and goes out once.

States:
- pending: waiting for its next attempt at `next_attempt_at` (new or deferred).
- sent: the relay took it (for all recipients, or for some while the rest were refused 5xx).
- failed: the relay refused it for good (5xx); kept for the operator, who may requeue it.
- dead: still undelivered when its lifetime ran out (expired), or its message file is gone.
- held: sending it was interrupted queue.max_pickups times (gateway/queue/schedule.py).

`attempts` counts tries: `claim_due` adds one when a send starts (a crash mid-send may have
reached the relay), counts the pickup of the crash guard (gateway/store/claims.py) and pushes
`next_attempt_at` a lease ahead, so a worker that dies mid-send leaves the message due again
after the lease, not at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.log import get_logger
from gateway.queue.schedule import crash_message
from gateway.store import blobs
from gateway.store.blobs import File
from gateway.store.claims import QueueTable, claim, next_due
from gateway.store.db import transaction

log = get_logger(__name__)

OUTBOX = QueueTable("outbox")

# How long a claimed message is left alone before it counts as abandoned (worker crashed).
DEFAULT_LEASE_SECONDS = 600.0


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    HELD = "held"


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    key: str
    kind: str
    state: OutboxState
    recipients: tuple[str, ...]
    message_path: Path
    attempts: int
    next_attempt_at: float
    error: str | None
    created_at: float
    updated_at: float
    sent_at: float | None
    pickups: int = 0


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def enqueue(
    conn: sqlite3.Connection,
    *,
    key: str,
    kind: str,
    recipients: Sequence[str],
    message_path: Path,
    now: float | None = None,
    files: Sequence[File] = (),
) -> bool:
    """Record a mail to send; False (and nothing changed) if `key` was queued before. `files`
    (the message) are kept in the store with the row, where it keeps shared copies."""
    if not recipients:
        raise ValueError("a mail needs at least one recipient")
    at = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO outbox (key, kind, state, recipients, message_path, next_attempt_at,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO NOTHING",
            (
                key,
                kind,
                OutboxState.PENDING,
                json.dumps(list(recipients)),
                str(message_path),
                at,
                at,
                at,
            ),
        )
        queued = cursor.rowcount == 1
        if queued:
            blobs.put(conn, files, at)
        return queued


def claim_due(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    lease: float = DEFAULT_LEASE_SECONDS,
    max_pickups: int = 3,
) -> list[OutboxMessage]:
    """Pending messages due at `now`, oldest due first, each counted as one more attempt.

    A message whose sends were interrupted `max_pickups` times is held instead (logged).
    """
    with transaction(conn, row_locks=True):
        claimed = claim(
            conn,
            OUTBOX,
            where="state = ?",
            params=(OutboxState.PENDING,),
            now=now,
            limit=limit,
            max_pickups=max_pickups,
            lease=lambda _pickups: lease,
            count_attempt=True,
        )
        for row in claimed.held:
            conn.execute(
                "UPDATE outbox SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (
                    OutboxState.HELD,
                    crash_message(row["pickups"], "handing it to the relay"),
                    now,
                    row["id"],
                ),
            )
    for row in claimed.held:
        log.error("outbox.held", outbox_id=row["id"], key=row["key"], pickups=row["pickups"])
    return [_message(row) for row in claimed.rows]


def mark_sent(
    conn: sqlite3.Connection, message_id: int, now: float | None = None, error: str | None = None
) -> None:
    """The relay took the message. `error` notes recipients it refused for good, if any.
    Its shared copy goes in the same transaction: the recipient has the mail."""
    at = _now(now)
    with transaction(conn):
        if blobs.shares_files(conn):
            row = conn.execute(
                "SELECT message_path FROM outbox WHERE id = ?", (message_id,)
            ).fetchone()
            if row is not None:
                blobs.forget(conn, [row["message_path"]])
        conn.execute(
            "UPDATE outbox SET state = ?, sent_at = ?, updated_at = ?, error = ?, pickups = 0"
            " WHERE id = ?",
            (OutboxState.SENT, at, at, error, message_id),
        )


def defer(
    conn: sqlite3.Connection,
    message_id: int,
    error: str,
    delay: float,
    now: float | None = None,
    *,
    recipients: Sequence[str] | None = None,
    tried: bool = True,
) -> None:
    """Try again `delay` seconds from now; `recipients` narrows who is still owed the mail.

    `tried=False`: the message was claimed but not sent to the relay (the relay was found
    down on another message), so the attempt its claim counted is taken back.
    """
    at = _now(now)
    uncount = 0 if tried else 1
    with transaction(conn):
        if recipients is None:
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, error = ?, updated_at = ?, pickups = 0,"
                " attempts = max(attempts - ?, 0) WHERE id = ?",
                (at + delay, error, at, uncount, message_id),
            )
        else:
            if not recipients:
                raise ValueError("deferring to nobody: mark the message sent instead")
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, error = ?, updated_at = ?, pickups = 0,"
                " recipients = ? WHERE id = ?",
                (at + delay, error, at, json.dumps(list(recipients)), message_id),
            )


def mark_failed(
    conn: sqlite3.Connection, message_id: int, error: str, now: float | None = None
) -> None:
    """The relay refused the message for good (5xx)."""
    _finish(conn, message_id, OutboxState.FAILED, error, _now(now))


def mark_dead(
    conn: sqlite3.Connection, message_id: int, error: str, now: float | None = None
) -> None:
    """Given up: lifetime over, or nothing left to send."""
    _finish(conn, message_id, OutboxState.DEAD, error, _now(now))


def _finish(
    conn: sqlite3.Connection, message_id: int, state: OutboxState, error: str, now: float
) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE outbox SET state = ?, error = ?, updated_at = ?, pickups = 0 WHERE id = ?",
            (state, error, now, message_id),
        )


def requeue(
    conn: sqlite3.Connection, message_id: int, now: float | None = None, files: Sequence[File] = ()
) -> bool:
    """Make a failed, dead or deferred message due now; False if there is no such message.
    `files`: the message written anew, kept in the store with the change.

    Like Postfix's `postsuper -r`, a requeued message starts over: attempts and the lifetime
    count from now, or a dead message would die again at its first temporary failure.
    """
    at = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE outbox SET state = ?, attempts = 0, pickups = 0, next_attempt_at = ?,"
            " created_at = ?, updated_at = ? WHERE id = ? AND state != ?",
            (OutboxState.PENDING, at, at, at, message_id, OutboxState.SENT),
        )
        requeued = cursor.rowcount == 1
        if requeued:
            blobs.put(conn, files, at)
        return requeued


def give_up(conn: sqlite3.Connection, key: str, error: str, now: float | None = None) -> bool:
    """Stop trying the pending mail queued under `key` (dead); False if it is not pending or
    a send of it is under way (claimed and not finished): ask again later, so a mail is never
    given up while the relay may be taking it."""
    at = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE outbox SET state = ?, error = ?, updated_at = ?"
            " WHERE key = ? AND state = ? AND pickups = 0",
            (OutboxState.DEAD, error, at, key, OutboxState.PENDING),
        )
    return cursor.rowcount == 1


def requeue_key(
    conn: sqlite3.Connection, key: str, now: float | None = None, files: Sequence[File] = ()
) -> bool:
    """`requeue` for the mail queued under `key`, if its message file is still there (or is
    `files`, written anew)."""
    message = get_by_key(conn, key)
    if message is None or message.state is OutboxState.SENT:
        return False
    if not files and not blobs.present(conn, message.message_path):
        return False
    return requeue(conn, message.id, now, files)


def get_message(conn: sqlite3.Connection, message_id: int) -> OutboxMessage | None:
    row = conn.execute("SELECT * FROM outbox WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else _message(row)


def get_by_key(conn: sqlite3.Connection, key: str) -> OutboxMessage | None:
    """The message queued under `key` (to learn whether a notification has gone out)."""
    row = conn.execute("SELECT * FROM outbox WHERE key = ?", (key,)).fetchone()
    return None if row is None else _message(row)


def list_messages(
    conn: sqlite3.Connection, state: OutboxState | str | None = None
) -> list[OutboxMessage]:
    if state is None:
        rows = conn.execute("SELECT * FROM outbox ORDER BY id").fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM outbox WHERE state = ? ORDER BY id", (OutboxState(state),)
        ).fetchall()
    return [_message(row) for row in rows]


def pending_count(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute(
            "SELECT count(*) FROM outbox WHERE state = ?", (OutboxState.PENDING,)
        ).fetchone()[0]
    )


def next_due_at(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending message is due (for a worker deciding how long to sleep)."""
    return next_due(conn, OUTBOX, where="state = ?", params=(OutboxState.PENDING,))


def _message(row: sqlite3.Row) -> OutboxMessage:
    try:
        recipients = json.loads(row["recipients"])
    except ValueError:
        recipients = []
    return OutboxMessage(
        id=row["id"],
        key=row["key"],
        kind=row["kind"],
        state=OutboxState(row["state"]),
        recipients=tuple(str(r) for r in recipients) if isinstance(recipients, list) else (),
        message_path=Path(row["message_path"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
        pickups=row["pickups"],
    )


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Messages per state, every state present (for the metrics' queue depth)."""
    counts = {state.value: 0 for state in OutboxState}
    for row in conn.execute("SELECT state, count(*) AS n FROM outbox GROUP BY state"):
        counts[row["state"]] = int(row["n"])
    return counts
