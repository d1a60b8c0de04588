"""Claiming due work: the persisted crash guard of gateway/queue/schedule.py, one copy in SQL.

Every queue table has a due column (`next_attempt_at`) and a pickups column. `claim` runs in
the caller's transaction: it selects the rows due now, counts a pickup on each before any work
starts, and hands back separately the rows whose unfinished pickups already reached the limit,
for the caller to hold in the same transaction. Each queue's own outcomes (advance, defer,
fail, sent...) set pickups back to 0: a handled outcome is not a crash.

A claim may also push the row's due time `lease(pickups)` seconds ahead, so that while the
work is under way nothing else takes the item (a mail in the relay's hands, an inbound document
being converted). A claim names its owner, `BOOT_ID`, the id of the process that made it: when
a process dies mid-step, the next one takes back its predecessor's claims at start-up
(`release_claims`) instead of waiting out their leases; the pickups they counted stay, so a step
that kills the process still ends held after queue.max_pickups restarts.

On a store several nodes share (PostgreSQL: the connection carries `lease_seconds`), a claim
also writes a lease, `lease_until`: until then the row is the claiming process's, and a claim
by any other process passes it by (a claim is live while its pickups are unfinished and its
lease runs). A node that dies mid-step is not there to release anything at a restart; its
rows come free when their leases run out, and the next claim counts one more pickup on them,
so the crash guard still holds them after queue.max_pickups interruptions, on whichever nodes.
A claim runs in a transaction of its own, `transaction(conn, row_locks=True)`. In SQLite that
is the one writer's; on PostgreSQL the claim's SELECT locks the rows it returns, FOR UPDATE
SKIP LOCKED (store/dialect.py), so two nodes claiming at the same moment take different rows
side by side, never one row twice (the argument: store/postgres.py). Such a transaction writes
only rows it has locked: a claim's rows, and any other through `lock_row`.

A claim made during a worker's round (queue/runner.py, `round_of_claims`) is noted in the
round. A store on a server can be lost mid-step (PostgreSQL restarting): the step cannot record
its outcome, and its claim would keep the row for the claim's lease, from its own process too.
A round that met such an outage (`store_lost`) ends with its claims handed back (`hand_back`,
once the store answers again): each row still exactly as its claim left it gets the pickup
back and its due time from before the claim, as if the pickup had not happened, so the next
round takes it up at once. The outage is the store's, not the item's: the crash guard does not
count it. A step that had finished (an outcome recorded) changed its row, and is left alone.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from gateway.store import dialect
from gateway.store.db import transaction


@dataclass(frozen=True)
class QueueTable:
    """Where one queue keeps its discipline: table, due column and pickups column."""

    table: str
    due: str = "next_attempt_at"
    pickups: str = "pickups"
    touched: str | None = "updated_at"  # set to the claim's time, where the table has one
    owner: str = "claimed_by"  # the boot id of the process that claimed the row
    lease: str = "lease_until"  # shared stores: until when the claim keeps other nodes off


# This process's id in the claims it makes: one per start of the gateway.
BOOT_ID = secrets.token_hex(8)


@dataclass(frozen=True)
class Claimed:
    rows: list[sqlite3.Row]  # claimed now, one more pickup counted
    held: list[sqlite3.Row]  # pickups at the limit: for the caller to hold


@dataclass(frozen=True)
class Taken:
    """One row a claim took, as the claim left it (a hand-back changes it only if it still is)."""

    queue: QueueTable
    row_id: Any
    owner: str
    pickups: int  # the count the claim wrote
    due: float  # the due time the claim left
    due_before: float  # the due time before the claim


@dataclass
class Round:
    """The claims one round of a worker made, and whether the store was lost under it."""

    taken: list[Taken] = field(default_factory=list)
    store_lost: bool = False

    def interrupted(self) -> list[Taken]:
        """The claims to hand back: all of them if the store was lost during the round (those
        whose steps finished no longer match, and are left as they are)."""
        return list(self.taken) if self.store_lost else []


_ROUND: ContextVar[Round | None] = ContextVar("gateway_claims_round", default=None)


@contextmanager
def round_of_claims() -> Iterator[Round]:
    """Note the claims made in this context (and the tasks and store calls it starts)."""
    current = Round()
    token = _ROUND.set(current)
    try:
        yield current
    finally:
        _ROUND.reset(token)


def store_lost() -> None:
    """A store call of the current round met an outage (store/postgres.py says so)."""
    current = _ROUND.get()
    if current is not None:
        current.store_lost = True


def no_lease(_pickups: int) -> float:
    return 0.0


def locks_rows(conn: Any) -> bool:
    """Whether `conn` locks rows (PostgreSQL): a claim then locks what it takes, and passes
    over rows another transaction has locked. SQLite's one writer has every row."""
    return getattr(conn, "backend", "sqlite") == "postgresql"


def lock_row(conn: sqlite3.Connection, table: str, row_id: Any) -> bool:
    """Lock one more row in a claim's transaction, without waiting: False if another
    transaction has it this instant (its writer works on it; the caller leaves it for later)."""
    if not locks_rows(conn):
        return True
    row = conn.execute(
        f"SELECT id FROM {table} WHERE id = ?{dialect.skip_locked(table)}", (row_id,)
    ).fetchone()
    return row is not None


def unclaim(conn: sqlite3.Connection, queue: QueueTable, row_id: Any, now: float) -> None:
    """Take back, in the claim's own transaction, the claim of a row found not to be work
    after all: its pickup uncounted, due now at the latest, nobody's."""
    conn.execute(
        f"UPDATE {queue.table} SET {queue.pickups} = max({queue.pickups} - 1, 0),"
        f" {queue.due} = min({queue.due}, ?), {queue.owner} = NULL, {queue.lease} = NULL"
        " WHERE id = ?",
        (now, row_id),
    )


def shared_lease(conn: Any) -> float | None:
    """The lease a claim takes on a store other nodes share; None on a store of one process."""
    seconds = getattr(conn, "lease_seconds", None)
    return None if seconds is None else float(seconds)


def _not_others(
    conn: sqlite3.Connection, queue: QueueTable, now: float, owner: str
) -> tuple[str, tuple[Any, ...]]:
    """On a shared store, the condition (and its parameters) that leaves out the rows another
    process claimed and still works on; nothing on a store of one process."""
    if shared_lease(conn) is None:
        return "", ()
    table = queue.table
    return (
        f" AND NOT ({table}.{queue.pickups} > 0 AND coalesce({table}.{queue.lease}, 0) > ?"
        f" AND coalesce({table}.{queue.owner}, '') != ?)",
        (now, owner),
    )


def claim(
    conn: sqlite3.Connection,
    queue: QueueTable,
    *,
    where: str,
    params: Sequence[Any],
    now: float,
    limit: int,
    max_pickups: int,
    order: str | None = None,
    source: str | None = None,
    lease: Callable[[int], float] = no_lease,
    count_attempt: bool = False,
    owner: str = BOOT_ID,
) -> Claimed:
    """Due rows of `queue` matching `where` (inside the caller's transaction).

    `source` is the FROM clause when it is more than the table (a join); `where` and `order`
    may then name columns by table. `count_attempt` also adds one to `attempts` (queues that
    count a try when it starts, as Postfix counts a delivery before making it).
    """
    table, due, pickups = queue.table, queue.due, queue.pickups
    shared = shared_lease(conn)
    others, other_params = _not_others(conn, queue, now, owner)
    # Row locks (PostgreSQL): the rows returned are this transaction's until it ends, and a row
    # another claim holds this instant is passed over, not waited for. Read committed
    # re-checks `where` on the newest version of each row it locks, so a row claimed (or
    # finished) and committed meanwhile is not taken again.
    locks = dialect.skip_locked(table) if locks_rows(conn) else ""
    rows = conn.execute(
        f"SELECT {table}.* FROM {source or table} WHERE ({where}) AND {table}.{due} <= ?"
        f"{others} ORDER BY {order or f'{table}.{due}, {table}.id'} LIMIT ?{locks}",
        (*params, now, *other_params, limit),
    ).fetchall()
    claimed: list[sqlite3.Row] = []
    held: list[sqlite3.Row] = []
    for row in rows:
        if row[pickups] >= max_pickups:
            held.append(row)
            continue
        count = row[pickups] + 1
        assignments = [f"{pickups} = ?", f"{queue.owner} = ?"]
        values: list[Any] = [count, owner]
        if queue.touched:
            assignments.append(f"{queue.touched} = ?")
            values.append(now)
        if count_attempt:
            assignments.append("attempts = attempts + 1")
        pushed = lease(count)
        if pushed > 0:
            assignments.append(f"{due} = ?")
            values.append(now + pushed)
        if shared is not None:
            assignments.append(f"{queue.lease} = ?")
            values.append(now + max(shared, pushed))
        taken = conn.execute(
            f"UPDATE {table} SET {', '.join(assignments)} WHERE id = ? RETURNING *",
            (*values, row["id"]),
        ).fetchone()
        claimed.append(taken)
        current = _ROUND.get()
        if current is not None:
            current.taken.append(
                Taken(queue, row["id"], owner, taken[pickups], taken[due], row[due])
            )
    return Claimed(claimed, held)


def claim_together(
    conn: sqlite3.Connection,
    queue: QueueTable,
    *,
    where: str,
    params: Sequence[Any],
    now: float,
    limit: int,
    max_pickups: int,
    order: str | None = None,
    **options: Any,
) -> Claimed:
    """claim() for a batch worked on together (one round of a stage: one claim, its outcomes
    committed together), whose items therefore share their pickups.

    A crash while working on one item charges every item claimed with it. So an item that was
    interrupted before (pickups > 0) is claimed alone, and a batch holds only items never
    interrupted: an item that kills the process charges its batch-mates once, after which
    each is claimed alone, and only the culprit goes on to be held. With max_pickups 1 that
    single charge would hold the innocent: every claim is of one item then. The order is the
    queue's, so the item claimed alone is the one next in line.

    On a shared store, "next in line" is among the rows the claim may take: another node's
    live claim (its batch under way, pickups counted) is passed over as `claim` passes it
    over. Seen as first in line, it made every claim of the other nodes one item alone for as
    long as that batch was worked on, and cost nothing else: `claim` never took such a row,
    nor waited for it (the look is a plain read, which waits for no row lock). A row whose
    claim's lease ran out (its node died) is in line again, pickups and all: claimed alone.
    """
    table, pickups = queue.table, queue.pickups
    others, other_params = _not_others(conn, queue, now, options.get("owner", BOOT_ID))
    first = conn.execute(
        f"SELECT {table}.{pickups} FROM {options.get('source') or table}"
        f" WHERE ({where}) AND {table}.{queue.due} <= ?{others}"
        f" ORDER BY {order or f'{table}.{queue.due}, {table}.id'} LIMIT 1",
        (*params, now, *other_params),
    ).fetchone()
    alone = limit <= 1 or max_pickups <= 1 or first is None or first[0] > 0
    return claim(
        conn,
        queue,
        where=where if alone else f"({where}) AND {table}.{pickups} = 0",
        params=params,
        now=now,
        limit=1 if alone else limit,
        max_pickups=max_pickups,
        order=order,
        **options,
    )


def next_due(
    conn: sqlite3.Connection,
    queue: QueueTable,
    *,
    where: str,
    params: Sequence[Any],
    source: str | None = None,
) -> float | None:
    """When the earliest row of `queue` matching `where` is due (None: no such row), for its
    worker deciding how long to sleep."""
    table = queue.table
    row = conn.execute(
        f"SELECT min({table}.{queue.due}) FROM {source or table} WHERE {where}", tuple(params)
    ).fetchone()
    return None if row[0] is None else float(row[0])


def release_claims(
    conn: sqlite3.Connection, queues: Sequence[QueueTable], now: float, owner: str = BOOT_ID
) -> int:
    """Make every unfinished claim of another process due now (at start-up: that process is
    gone); how many were released. Their pickups stay counted."""
    released = 0
    with transaction(conn):
        for queue in queues:
            cursor = conn.execute(
                f"UPDATE {queue.table} SET {queue.due} = ? WHERE {queue.pickups} > 0"
                f" AND {queue.due} > ? AND ({queue.owner} IS NULL OR {queue.owner} != ?)",
                (now, now, owner),
            )
            released += cursor.rowcount
    return released


def give_back(conn: sqlite3.Connection, queue: QueueTable, row_id: Any) -> bool:
    """Undo this process's claim of one row that it did not work on (it is stopping): the
    pickup the claim counted is taken back and the row is nobody's, due as it was."""
    return give_back_all(conn, queue, [row_id]) == 1


def give_back_all(conn: sqlite3.Connection, queue: QueueTable, row_ids: Sequence[Any]) -> int:
    """give_back for several rows of one claim (a batch cut short), in one transaction; how
    many were given back."""
    given = 0
    with transaction(conn):
        for row_id in row_ids:
            cursor = conn.execute(
                f"UPDATE {queue.table} SET {queue.pickups} = max({queue.pickups} - 1, 0),"
                f" {queue.owner} = NULL WHERE id = ? AND {queue.owner} = ?",
                (row_id, BOOT_ID),
            )
            given += cursor.rowcount
    return given


def hand_back(conn: sqlite3.Connection, taken: Sequence[Taken]) -> int:
    """Undo claims whose steps a store outage interrupted (see the module docstring): each row
    still as its claim left it gets its pickup back, its due time from before the claim, and
    no owner or lease; how many were."""
    handed = 0
    with transaction(conn):
        for claim_ in taken:
            queue = claim_.queue
            cursor = conn.execute(
                f"UPDATE {queue.table} SET {queue.pickups} = {queue.pickups} - 1,"
                f" {queue.due} = ?, {queue.owner} = NULL, {queue.lease} = NULL"
                f" WHERE id = ? AND {queue.owner} = ? AND {queue.pickups} = ? AND {queue.due} = ?",
                (claim_.due_before, claim_.row_id, claim_.owner, claim_.pickups, claim_.due),
            )
            handed += cursor.rowcount
    return handed
