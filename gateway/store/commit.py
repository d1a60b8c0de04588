"""Group commit: writes that arrive together share one transaction, and so one fsync.

Every 250 and every webhook 200 waits for its row to be durable, and with synchronous=FULL each
transaction is an fsync of the WAL: with one transaction per message, ten sessions took turns at
the disk. `GroupCommit.run(fn, ...)` queues `fn(conn, ...)`; the writes queued during one turn
of the event loop, and all those queued while a batch is being committed, go to the store's
thread as one batch: BEGIN IMMEDIATE, each write in a SAVEPOINT of its own, COMMIT. Only after
the COMMIT returns does any of them get its result, so nothing is answered before its row is on
disk (durability is exactly that of one transaction each). At low load a batch is one write and
waits for nothing: the first write of an idle store goes out on the next loop turn.

One write's exception (an IntegrityError, a bug) rolls back its own savepoint and is raised to
its caller alone; the others commit. If BEGIN or COMMIT fails, every write of the batch gets
that exception and none of them is answered as stored.

`fn` must not open a transaction of its own (it runs inside the batch's, like the functions
`claims.claim` documents): the store modules keep such statement-level functions beside the
ones that wrap them in `transaction()` (`jobs.insert_job` / `create_job`,
`events.insert_event` / `record_event`). A store backend with its own notion of a transaction
can take or leave this: anything with the same `run` (fn inside a transaction it owns,
result after the commit) fits where a GroupCommit is used.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.store import claims
from gateway.store.db import Database, StoreUnavailable, transaction

P = ParamSpec("P")
T = TypeVar("T")

# At most this many writes per transaction: a bound on how long one batch holds the store's
# thread (and on the savepoint bookkeeping), far above what one loop turn gathers.
MAX_BATCH = 256


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several times more
class _Write:
    call: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


class GroupCommit:
    """Batches the writes of one Database; one instance per database, shared by its writers."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        # Batches committed and writes in them, for the benchmarks and metrics.
        self.batches = 0
        self.writes = 0

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(conn, ...)` inside a shared transaction; its result once that is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(_bound(fn, args, kwargs), future))
        if self._flusher is None or self._flusher.done():
            # In a context of its own, not a copy of this writer's: the batch is every
            # writer's, so none of them lends it its bound log values or its round of claims.
            self._flusher = loop.create_task(self._flush(), context=contextvars.Context())
        # Shielded: a caller that goes away (a client hanging up) leaves its write in the batch,
        # as a cancelled Database.run leaves its call on the store's thread.
        try:
            return await asyncio.shield(future)
        except StoreUnavailable:
            # The batch went out from the flusher's task, whichever writer started it: the
            # outage is this caller's round's too, which hands its claims back (claims.py).
            claims.store_lost()
            raise

    async def _flush(self) -> None:
        # One loop turn first: the writers woken in this turn join the batch.
        await asyncio.sleep(0)
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                # Ahead of the workers' calls on the store's thread: a client waits on these.
                run = getattr(self.db, "run_first", self.db.run)
                outcomes = await run(_commit, [write.call for write in batch])
            except BaseException as exc:
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            self.writes += len(batch)
            for write, (ok, value) in zip(batch, outcomes, strict=True):
                if write.future.done():
                    continue
                if ok:
                    write.future.set_result(value)
                else:
                    write.future.set_exception(value)


def _bound(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[sqlite3.Connection], Any]:
    """fn with its arguments, waiting for the connection as its first."""

    def call(conn: sqlite3.Connection) -> Any:
        return fn(conn, *args, **kwargs)

    return call


def _commit(
    conn: sqlite3.Connection, calls: list[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[bool, Any]]:
    """On the store's thread: every call in one transaction, each in its own savepoint."""
    outcomes: list[tuple[bool, Any]] = []
    with transaction(conn):
        for call in calls:
            conn.execute("SAVEPOINT grouped_write")
            try:
                value = call(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO grouped_write")
                conn.execute("RELEASE grouped_write")
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE grouped_write")
                outcomes.append((True, value))
    return outcomes
