"""What the status pages read from the store: counts, the searchable list of faxes, the chart.

Read-only SQL over the tables the store modules own (jobs, faxes, inbound, outbox), run on the
store's thread with `Database.run`. A `Scope` limits every query to what one user may see: an
admin sees everything; a viewer the outbound faxes they sent (envelope sender or login) and the
inbound faxes to numbers routed to them (`inbound.routes`, or `inbound.default_recipients` for
the numbers no route names).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from gateway.config import Config
from gateway.store.inbound import InboundState
from gateway.store.records import FaxState

OUTBOUND = "outbound"
INBOUND = "inbound"
_FAX_STATES = frozenset(s.value for s in FaxState)
_INBOUND_STATES = frozenset(s.value for s in InboundState)
STATUSES = (*(s.value for s in FaxState), *(s.value for s in InboundState))
_DIGITS = re.compile(r"\D+")


@dataclass(frozen=True)
class Scope:
    """None for `user`: everything; else a viewer's own faxes."""

    user: str | None
    inbound_numbers: tuple[str, ...] = ()
    unrouted: bool = False  # the user is a default recipient: numbers no route names
    routed_numbers: tuple[str, ...] = ()


def scope_for(config: Config, user: str | None) -> Scope:
    """The scope of a viewer `user` (None: an admin's, everything)."""
    if user is None:
        return Scope(None)
    lowered = user.lower()
    mine = tuple(
        number
        for number, route in config.inbound.routes.items()
        if lowered in (r.lower() for r in route.recipients)
    )
    default = lowered in (r.lower() for r in config.inbound.default_recipients)
    return Scope(lowered, mine, default, routed_numbers(config))


def routed_numbers(config: Config) -> tuple[str, ...]:
    """The numbers a route names (with recipients; an empty route falls back to the default)."""
    return tuple(number for number, route in config.inbound.routes.items() if route.recipients)


def mailed_to(config: Config, to_number: str) -> tuple[str, ...]:
    """Where an inbound fax to `to_number` is mailed: the rule of InboundWorker.recipients_for
    (inbound.routes for the number, else inbound.default_recipients)."""
    return config.inbound.recipients_for(to_number)


def inbound_numbers_mailed_to(config: Config, text: str) -> tuple[tuple[str, ...], bool]:
    """The numbers whose faxes are mailed to an address containing `text`, and whether the
    default recipients match (for the numbers no route names)."""
    needle = text.lower()
    numbers = tuple(
        number
        for number, route in config.inbound.routes.items()
        if any(needle in r.lower() for r in route.recipients)
    )
    return numbers, any(needle in r.lower() for r in config.inbound.default_recipients)


@dataclass(frozen=True)
class FaxFilter:
    number: str = ""
    sender: str = ""
    recipient: str = ""
    status: str = ""
    direction: str = ""
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class FaxRow:
    direction: str
    key: str  # the job id (outbound) or the inbound row id
    from_number: str
    to_number: str
    sender: str  # outbound: the envelope sender; inbound: ""
    status: str
    error: str | None
    pages: int | None
    at: float


class _Where:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *args: Any) -> None:
        self.parts.append(sql)
        self.args.extend(args)

    def never(self) -> None:
        self.parts.append("0")

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "1"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})" if values else "0"


def _inbound_numbers(
    where: _Where, numbers: tuple[str, ...], unrouted: bool, routed: tuple[str, ...]
) -> None:
    """Inbound faxes to `numbers`, or (`unrouted`) to any number not in `routed`."""
    clauses = [_in("i.to_number", numbers)]
    args: list[Any] = list(numbers)
    if unrouted:
        clauses.append(f"NOT {_in('i.to_number', routed)}" if routed else "1")
        args.extend(routed)
    where.add("(" + " OR ".join(clauses) + ")", *args)


def _outbound_where(scope: Scope, flt: FaxFilter) -> _Where:
    where = _Where()
    if flt.direction == INBOUND or (flt.status and flt.status not in _FAX_STATES):
        where.never()
        return where
    if scope.user is not None:
        where.add("(j.sender = ? OR lower(j.auth_user) = ?)", scope.user, scope.user)
    digits = _DIGITS.sub("", flt.number)
    if flt.number:
        if not digits:
            where.never()
        where.add("(f.recipient LIKE ? OR j.from_number LIKE ?)", f"%{digits}%", f"%{digits}%")
    if flt.sender:
        where.add("j.sender LIKE ?", f"%{flt.sender.lower()}%")
    if flt.recipient:
        wanted = _DIGITS.sub("", flt.recipient)
        if not wanted or "@" in flt.recipient:
            where.never()
        where.add("f.recipient LIKE ?", f"%{wanted}%")
    if flt.status:
        where.add("f.state = ?", flt.status)
    if flt.since is not None:
        where.add("f.created_at >= ?", flt.since)
    if flt.until is not None:
        where.add("f.created_at < ?", flt.until)
    return where


def _inbound_where(config: Config, scope: Scope, flt: FaxFilter) -> _Where:
    where = _Where()
    if (
        flt.direction == OUTBOUND
        or (flt.status and flt.status not in _INBOUND_STATES)
        # An inbound fax has no envelope sender: only its calling number can match.
        or (flt.sender and not _DIGITS.sub("", flt.sender))
    ):
        where.never()
        return where
    if scope.user is not None:
        _inbound_numbers(where, scope.inbound_numbers, scope.unrouted, scope.routed_numbers)
    if flt.number:
        digits = _DIGITS.sub("", flt.number)
        if not digits:
            where.never()
        where.add("(i.to_number LIKE ? OR i.from_number LIKE ?)", f"%{digits}%", f"%{digits}%")
    if flt.sender:
        where.add("i.from_number LIKE ?", f"%{_DIGITS.sub('', flt.sender)}%")
    if flt.recipient:
        numbers, default = inbound_numbers_mailed_to(config, flt.recipient)
        _inbound_numbers(where, numbers, default, routed_numbers(config))
    if flt.status:
        where.add("i.state = ?", flt.status)
    if flt.since is not None:
        where.add("i.created_at >= ?", flt.since)
    if flt.until is not None:
        where.add("i.created_at < ?", flt.until)
    return where


def _union(config: Config, scope: Scope, flt: FaxFilter) -> tuple[str, list[Any]]:
    out = _outbound_where(scope, flt)
    inb = _inbound_where(config, scope, flt)
    sql = (
        "SELECT 'outbound' AS direction, j.id AS key, j.from_number AS from_number,"
        " f.recipient AS to_number, j.sender AS sender, f.state AS status,"
        " COALESCE(f.error_description, CASE WHEN f.state IN ('failed', 'held')"
        " THEN j.error END) AS error, COALESCE(f.pages, j.pages) AS pages,"
        " f.created_at AS at, f.id AS tiebreak"
        f" FROM faxes f JOIN jobs j ON j.id = f.job_id WHERE {out.sql()}"
        " UNION ALL"
        " SELECT 'inbound', CAST(i.id AS TEXT), i.from_number, i.to_number, '', i.state, i.error,"
        f" i.pages, i.created_at, i.id FROM inbound i WHERE {inb.sql()}"
    )
    return sql, [*out.args, *inb.args]


def search_faxes(
    conn: sqlite3.Connection,
    config: Config,
    scope: Scope,
    flt: FaxFilter,
    *,
    limit: int,
    offset: int,
) -> tuple[list[FaxRow], int]:
    """One page of faxes, newest first, and how many match in all."""
    sql, args = _union(config, scope, flt)
    total = int(conn.execute(f"SELECT count(*) FROM ({sql})", args).fetchone()[0])
    rows = conn.execute(
        f"SELECT * FROM ({sql}) ORDER BY at DESC, tiebreak DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return [
        FaxRow(
            direction=row["direction"],
            key=row["key"],
            from_number=row["from_number"],
            to_number=row["to_number"],
            sender=row["sender"],
            status=row["status"],
            error=row["error"],
            pages=row["pages"],
            at=row["at"],
        )
        for row in rows
    ], total


@dataclass(frozen=True)
class Period:
    sent: int  # outbound faxes (cancelled ones not counted)
    received: int  # inbound faxes
    failures: int  # outbound failed plus inbound dead
    pages: int  # pages delivered out plus pages received


def period(conn: sqlite3.Connection, config: Config, scope: Scope, since: float) -> Period:
    out = _outbound_where(scope, FaxFilter(since=since))
    row = conn.execute(
        "SELECT count(*) AS n,"
        " COALESCE(sum(CASE WHEN f.state = 'failed' THEN 1 ELSE 0 END), 0) AS failed,"
        " COALESCE(sum(CASE WHEN f.state = 'delivered' THEN COALESCE(f.pages, j.pages, 0)"
        " END), 0) AS pages"
        " FROM faxes f JOIN jobs j ON j.id = f.job_id"
        f" WHERE {out.sql()} AND f.state != 'cancelled'",
        out.args,
    ).fetchone()
    inb = _inbound_where(config, scope, FaxFilter(since=since))
    irow = conn.execute(
        "SELECT count(*) AS n,"
        " COALESCE(sum(CASE WHEN i.state = 'dead' THEN 1 ELSE 0 END), 0) AS dead,"
        f" COALESCE(sum(i.pages), 0) AS pages FROM inbound i WHERE {inb.sql()}",
        inb.args,
    ).fetchone()
    return Period(
        sent=int(row["n"]),
        received=int(irow["n"]),
        failures=int(row["failed"]) + int(irow["dead"]),
        pages=int(row["pages"]) + int(irow["pages"]),
    )


def hourly(
    conn: sqlite3.Connection, config: Config, scope: Scope, start: float, hours: int = 24
) -> tuple[list[int], list[int]]:
    """Faxes out and in per hour from `start` (hour 0) for `hours` hours."""
    # Bucketed here rather than in SQL: integer division differs between databases, and a
    # day's faxes are few enough to read their times.
    flt = FaxFilter(since=start, until=start + hours * 3600)
    out = _outbound_where(scope, flt)
    out_times = conn.execute(
        "SELECT f.created_at FROM faxes f JOIN jobs j ON j.id = f.job_id"
        f" WHERE {out.sql()} AND f.state != 'cancelled'",
        out.args,
    ).fetchall()
    inb = _inbound_where(config, scope, flt)
    in_times = conn.execute(
        f"SELECT i.created_at FROM inbound i WHERE {inb.sql()}", inb.args
    ).fetchall()
    return _buckets(out_times, start, hours), _buckets(in_times, start, hours)


def _buckets(rows: list[Any], start: float, hours: int) -> list[int]:
    counts = [0] * hours
    for (at,) in rows:
        hour = int((at - start) // 3600)
        if 0 <= hour < hours:
            counts[hour] += 1
    return counts


def may_see_job(conn: sqlite3.Connection, scope: Scope, job_id: str) -> bool:
    if scope.user is None:
        return True
    row = conn.execute(
        "SELECT 1 FROM jobs j WHERE j.id = ? AND (j.sender = ? OR lower(j.auth_user) = ?)",
        (job_id, scope.user, scope.user),
    ).fetchone()
    return row is not None


def may_see_inbound(conn: sqlite3.Connection, scope: Scope, inbound_id: int) -> bool:
    if scope.user is None:
        return True
    where = _Where()
    where.add("i.id = ?", inbound_id)
    _inbound_numbers(where, scope.inbound_numbers, scope.unrouted, scope.routed_numbers)
    return (
        conn.execute(f"SELECT 1 FROM inbound i WHERE {where.sql()}", where.args).fetchone()
        is not None
    )
