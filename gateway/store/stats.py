"""What the administrator is told, read from the store (SQL only): the daily summary's numbers,
and the held jobs and dead letters each of which gets its own mail (gateway/admin/).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from gateway.store.inbound import InboundFax, InboundState, inbound_in_state
from gateway.store.jobs import queue_depth
from gateway.store.outbox import state_counts as outbox_counts
from gateway.store.records import Fax, FaxState, Job, JobState

# How many senders the summary names.
TOP_SENDERS = 5


@dataclass(frozen=True)
class DayNumbers:
    """One day of traffic, [start, end), and the queues as they are now."""

    start: float
    end: float
    delivered: int = 0
    failed: int = 0
    pages_out: int = 0
    received: int = 0
    pages_in: int = 0
    failures: list[tuple[int | None, int]] = field(default_factory=list)  # (code, faxes)
    top_senders: list[tuple[str, int]] = field(default_factory=list)  # (sender, faxes)
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letters: int = 0  # dead now, waiting for an operator
    new_dead_letters: int = 0  # of which died in the day


def day_numbers(conn: sqlite3.Connection, start: float, end: float) -> DayNumbers:
    """The summary's numbers for faxes that finished (out) or arrived (in) in [start, end)."""
    window = (start, end)
    out = conn.execute(
        "SELECT state, count(*) AS faxes, coalesce(sum(pages), 0) AS pages FROM faxes"
        " WHERE finished_at >= ? AND finished_at < ? AND state IN (?, ?) GROUP BY state",
        (*window, FaxState.DELIVERED, FaxState.FAILED),
    ).fetchall()
    by_state = {row["state"]: (int(row["faxes"]), int(row["pages"])) for row in out}
    received = conn.execute(
        "SELECT count(*), coalesce(sum(pages), 0) FROM inbound"
        " WHERE created_at >= ? AND created_at < ?",
        window,
    ).fetchone()
    failures = conn.execute(
        "SELECT error_code, count(*) FROM faxes WHERE state = ? AND finished_at >= ?"
        " AND finished_at < ? GROUP BY error_code ORDER BY count(*) DESC, error_code",
        (FaxState.FAILED, *window),
    ).fetchall()
    senders = conn.execute(
        "SELECT jobs.sender, count(*) FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
        " WHERE jobs.created_at >= ? AND jobs.created_at < ? GROUP BY jobs.sender"
        " ORDER BY count(*) DESC, jobs.sender LIMIT ?",
        (*window, TOP_SENDERS),
    ).fetchall()
    inbound = {
        str(state): int(count)
        for state, count in conn.execute(
            "SELECT state, count(*) FROM inbound WHERE state NOT IN (?, ?) GROUP BY state",
            (InboundState.MAILED, InboundState.DEAD),
        )
    }
    pending_mail = {k: v for k, v in outbox_counts(conn).items() if k != "sent"}
    dead = conn.execute(
        "SELECT count(*), coalesce(sum(updated_at >= ? AND updated_at < ?), 0) FROM inbound"
        " WHERE state = ?",
        (*window, InboundState.DEAD),
    ).fetchone()
    return DayNumbers(
        start=start,
        end=end,
        delivered=by_state.get(FaxState.DELIVERED, (0, 0))[0],
        failed=by_state.get(FaxState.FAILED, (0, 0))[0],
        pages_out=by_state.get(FaxState.DELIVERED, (0, 0))[1],
        received=int(received[0]),
        pages_in=int(received[1]),
        failures=[(code, int(count)) for code, count in failures],
        top_senders=[(str(sender), int(count)) for sender, count in senders],
        queues={"jobs": queue_depth(conn), "inbound": inbound, "outbox": pending_mail},
        dead_letters=int(dead[0]),
        new_dead_letters=int(dead[1]),
    )


def held_jobs_since(conn: sqlite3.Connection, since: float) -> list[tuple[Job, list[Fax]]]:
    """Jobs held now that were held at or after `since`, with their faxes, oldest first."""
    rows = conn.execute(
        "SELECT * FROM jobs WHERE state = ? AND updated_at >= ? ORDER BY updated_at, id",
        (JobState.HELD, since),
    ).fetchall()
    result: list[tuple[Job, list[Fax]]] = []
    for row in rows:
        faxes = conn.execute(
            "SELECT * FROM faxes WHERE job_id = ? ORDER BY id", (row["id"],)
        ).fetchall()
        result.append((Job.from_row(row), [Fax.from_row(f) for f in faxes]))
    return result


def dead_letters_since(conn: sqlite3.Connection, since: float) -> list[InboundFax]:
    """Inbound faxes dead now that died at or after `since`, oldest first (dead letters are
    few: they wait for an operator, and the purge takes the old ones)."""
    dead = [f for f in inbound_in_state(conn, InboundState.DEAD) if f.updated_at >= since]
    return sorted(dead, key=lambda fax: (fax.updated_at, fax.id))
