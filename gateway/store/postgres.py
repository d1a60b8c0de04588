"""The PostgreSQL store: the same repository functions and migrations, on a shared server.

With `[store] backend = "postgresql"` every gateway node uses one database, so any node can take
over another's queue. Nothing in the repository modules (store/jobs.py, faxes.py, ...) knows:
they are handed a `PgConnection`, which speaks like the sqlite3.Connection they were written for
(`execute` with `?` placeholders, rows readable by name and by index, `rowcount`, `lastrowid`)
and translates their SQL once (store/dialect.py).

Transactions keep SQLite's meaning. The store's transactions read, then write (settle a job
from its faxes' states, apply a carrier status to the fax it names), and were written for
SQLite, where `BEGIN IMMEDIATE` admits one writer at a time. Here the same statement begins a
transaction and takes the store's write lock, a transaction-level advisory lock, so those
writers on every node take turns exactly as they do in one SQLite file, whatever isolation
level the server defaults to. Reads outside a transaction see what is committed, as in WAL
mode. A write transaction is a few statements of well under a millisecond each.

Claims alone run side by side (`transaction(conn, row_locks=True)`: `begin_row_locked`, no
store lock). Why that is safe under READ COMMITTED, and why the others keep the lock:

- A claim's SELECT ends FOR UPDATE SKIP LOCKED (store/claims.py, dialect.skip_locked): each
  row it returns is locked until its commit, and a row locked by another transaction is
  passed over, not waited for. A row another claim committed meanwhile is locked in its
  newest version, on which PostgreSQL evaluates the claim's WHERE again, so a row claimed
  (pickups and lease written) or finished since the statement began is not taken again.
  Two claims therefore never take one row, and the pickup count each writes is computed
  from a version no one else can change before it commits.
- A claim writes only rows it has locked: the claimed and the held rows, and a held fax's job,
  which it locks first without waiting (`claims.lock_row`; held at the next claim if another
  transaction has it). So a claim never waits for a lock while holding one: no deadlock.
- What a claim reads without locking is a fax's job through the submit queue's join (the
  lock is the fax's). PostgreSQL may then pair the locked fax with the job as the statement
  first saw it, so claim_faxes reads the job again and gives the claim back if it is no
  longer uploaded or submitted: every claim is one the serial order could have made.
- The locked writers still serialise among themselves, and claims do not disturb them: a
  claim changes only a row's discipline (pickups, owner, lease, attempts, due) and, for an
  item it holds, the state of a row waiting for its stage (and of its job) to held. A locked
  writer that reads a row before writing it either guards the write in its UPDATE (`WHERE
  state = ?`, `pickups > 0`), which PostgreSQL evaluates on the newest version after waiting
  for the claim's row lock, or acts only on rows in states no claim takes (a submitted fax, a
  final one).
- The others cannot drop the lock: many read several rows and write another from what they
  read (settle_job counts a job's faxes and sets the job; two webhooks finishing the last two
  faxes of one job would, under READ COMMITTED, each see the other's fax unfinished, and
  the job would never be done). Locking the rows each reads would work too, but it is not
  needed: what two nodes do at the same moment, and the benchmark measures, is claim.

Errors come out as the DB-API exceptions the rest of the gateway already handles (sqlite3's:
IntegrityError for a broken unique key, OperationalError for a server that is down or a lock or
statement that timed out), so a caller has one vocabulary whichever backend runs.

Connections come from a psycopg pool; calls run on a small thread pool (one thread per
connection), never on the event loop. Every connection has a statement timeout and a lock
timeout, and the pool a connect timeout: a server that is down fails a call within seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway import log
from gateway.store import claims, dialect
from gateway.store.cluster import OnceOnlyLock, WakeChannel
from gateway.store.db import Database, StoreError, StoreUnavailable, _split, transaction
from gateway.store.schema import MIGRATIONS

logger = log.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Advisory lock classes (the first key); the second key is the schema's hash, so two gateways
# in two schemas of one database never wait for each other.
WRITE_LOCK = 0x46415801
MIGRATE_LOCK = 0x46415802
_SCHEMA_KEY = "hashtext(current_schema())"

VERSION_TABLE = "schema_version"


class Row(Sequence[Any]):
    """A result row read by column name or by index, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key]]
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=False))!r})"


def _rows(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    description = cursor.description or ()
    index = {column.name: position for position, column in enumerate(description)}
    return lambda values: Row(values, index)


# SQLSTATEs that say the server went away: class 08 (connection exception) and the operator's
# shutdowns (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
_GONE = frozenset({"57P01", "57P02", "57P03"})


def _lost(exc: psycopg.Error, broken: bool) -> bool:
    """Whether `exc` means the store's server is out of reach, not that the call was wrong."""
    state = exc.sqlstate or ""
    return broken or state.startswith("08") or state in _GONE


def _as_sqlite_error(exc: psycopg.Error, broken: bool = False) -> sqlite3.Error:
    """The DB-API exception of the same kind, as the callers know them (see the docstring);
    `broken`: the connection did not survive the call."""
    kind: type[sqlite3.Error]
    if _lost(exc, broken):
        # The server is down or restarting, or the link to it broke: transient, and the
        # runner hands back the claims of the round (store/claims.py).
        return StoreUnavailable(f"postgresql: store unreachable: {exc}".strip())
    if isinstance(
        exc,
        psycopg.errors.LockNotAvailable
        | psycopg.errors.QueryCanceled
        | psycopg.errors.TransactionRollback,
    ):
        # Waited past lock_timeout or statement_timeout, or rolled back by the server to end a
        # deadlock: SQLite's "database is locked", which queue.schedule.resource_error defers
        # without charging the item a pickup.
        return sqlite3.OperationalError(f"postgresql: store locked: {exc}".strip())
    if isinstance(exc, psycopg.IntegrityError):
        kind = sqlite3.IntegrityError
    elif isinstance(exc, psycopg.OperationalError):
        kind = sqlite3.OperationalError
    elif isinstance(exc, psycopg.ProgrammingError):
        kind = sqlite3.ProgrammingError
    elif isinstance(exc, psycopg.DataError):
        kind = sqlite3.DataError
    elif isinstance(exc, psycopg.InterfaceError):
        return StoreUnavailable(f"postgresql: {exc}".strip())  # a connection that broke
    else:
        kind = sqlite3.DatabaseError
    return kind(f"postgresql: {exc}".strip())


class PgCursor:
    """What `PgConnection.execute` returns: the parts of sqlite3.Cursor the store uses."""

    def __init__(self, connection: PgConnection, cursor: psycopg.Cursor[Row] | None) -> None:
        self._connection = connection
        self._cursor = cursor  # None: a statement that did not reach the server

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The id the last INSERT generated (its table's identity column), as SQLite's."""
        row = self._connection.execute("SELECT lastval()").fetchone()
        return None if row is None else int(row[0])

    def fetchone(self) -> Row | None:
        if self._cursor is None or self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        if self._cursor is None or self._cursor.description is None:
            return []
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PgConnection:
    """A pooled psycopg connection (autocommit) in the shape of sqlite3.Connection."""

    backend = "postgresql"
    # Other nodes need the files rows name: their shared copies are kept (store/blobs.py).
    shares_files = True

    def __init__(self, raw: psycopg.Connection[Row], *, lease_seconds: float) -> None:
        self.raw = raw
        # How long a claim keeps other nodes off its row (store/claims.py).
        self.lease_seconds = lease_seconds

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> PgCursor:
        command = sql.strip().upper()
        if command == "BEGIN IMMEDIATE":
            return self._begin()
        if command == "ROLLBACK" and self._gone:
            return PgCursor(self, None)  # nothing to roll back on a dead link
        return self._run(dialect.query(sql), parameters)

    @property
    def _gone(self) -> bool:
        return self.raw.broken or self.raw.closed

    @property
    def in_transaction(self) -> bool:
        """As sqlite3.Connection's: a transaction is open (db.transaction rolls it back after
        a failed COMMIT). A connection that broke has none left."""
        if self._gone:
            return False
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]]) -> PgCursor:
        try:
            cursor = self.raw.cursor()
            cursor.executemany(dialect.query(sql), seq_of_parameters)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc, self._gone) from exc
        return PgCursor(self, cursor)

    def begin_row_locked(self) -> None:
        """BEGIN a transaction that locks the rows it works on itself (db.transaction's
        `row_locks`, a claim): it does not take the store's write lock (the docstring)."""
        self._run("BEGIN", ())

    def _begin(self) -> PgCursor:
        self._run("BEGIN", ())
        try:
            return self._run(f"SELECT pg_advisory_xact_lock(%s, {_SCHEMA_KEY})", (WRITE_LOCK,))
        except sqlite3.Error:
            # Not inside the caller's try yet: the transaction is ours to end.
            if not self._gone:
                self._run("ROLLBACK", ())
            raise

    def _run(self, sql: str, parameters: Sequence[Any]) -> PgCursor:
        try:
            cursor = self.raw.execute(sql, tuple(parameters))  # type: ignore[call-overload]
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc, self._gone) from exc
        return PgCursor(self, cursor)

    def close(self) -> None:
        """The pool owns the connection: closing a borrowed one is not ours to do."""


class PostgresDatabase(Database):
    """The store on a PostgreSQL server: a pool of connections and the threads that use them.

    The same public shape as the SQLite `Database` (`open`, `run`, `run_sync`, `close`), so the
    daemon, the workers and the queue tools take either.
    """

    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        lease_seconds: float = 60.0,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        self.path = None  # type: ignore[assignment]
        self.dsn = dsn
        self.lease_seconds = lease_seconds
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="store")
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "row_factory": _rows,
                "connect_timeout": max(int(connect_timeout), 1),
            },
            configure=self._configure,
            timeout=connect_timeout,
            # A failed connect is retried for this long in the background, then given up; the
            # next call that needs a connection tries again at once. So a server that was away
            # for minutes is used again on the first call after it is back, not after the
            # pool's backoff has grown to minutes.
            reconnect_timeout=connect_timeout,
            open=False,
            name="store",
        )
        self._opened = False
        self._wakes = WakeChannel(dsn, connect_timeout)
        self._once_only = OnceOnlyLock(dsn, connect_timeout)
        self._wake_pending = False

    @property
    def where(self) -> str:
        """host:port/database of the server, without the password (for logs and messages)."""
        parts = conninfo.conninfo_to_dict(self.dsn)
        host, port = parts.get("host", "localhost"), parts.get("port", "5432")
        return f"{host}:{port}/{parts.get('dbname', '')}"

    def _configure(self, raw: psycopg.Connection[Any]) -> None:
        millis = int(self.statement_timeout * 1000)
        raw.execute(f"SET statement_timeout = {millis}")
        raw.execute(f"SET lock_timeout = {millis}")
        raw.execute(f"SET idle_in_transaction_session_timeout = {2 * millis}")

    def _open(self) -> None:
        try:
            self._pool.open(wait=True, timeout=self.connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(
                f"cannot connect to the PostgreSQL store at {self.where} within"
                f" {self.connect_timeout:g} s"
            ) from None
        self._opened = True
        self._call(migrate)

    def open_sync(self) -> PostgresDatabase:
        self._executor.submit(self._open).result()
        return self

    async def open(self) -> PostgresDatabase:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)
        return self

    @property
    def conn(self) -> sqlite3.Connection:
        raise StoreError("the PostgreSQL store has no single connection: use run()")

    def connection(self) -> PgConnection:
        """One connection of the pool for the caller's thread, kept until `close` (tests and
        tools that call repository functions directly)."""
        raw = self._pool.getconn()
        self._borrowed = [*getattr(self, "_borrowed", []), raw]
        return PgConnection(raw, lease_seconds=self.lease_seconds)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._opened:
            raise StoreError("store is not open")
        try:
            with self._pool.connection() as raw:
                return fn(PgConnection(raw, lease_seconds=self.lease_seconds), *args, **kwargs)
        except PoolTimeout:
            raise StoreUnavailable(
                f"postgresql: no connection to the store at {self.where} (is the server up?)"
            ) from None
        except psycopg.Error as exc:
            # Raised by the pool or the connection outside PgConnection's own translation
            # (returning a connection that broke): a link to the server that failed.
            raise _as_sqlite_error(exc, broken=True) from exc

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        call = partial(self._call, fn, *args, **kwargs)
        try:
            # In a copy of the caller's context, as the SQLite store's run.
            return await loop.run_in_executor(self._executor, contextvars.copy_context().run, call)
        except StoreUnavailable:
            claims.store_lost()  # the caller's round hands its claims back (store/claims.py)
            raise

    def run_sync(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return self._executor.submit(partial(self._call, fn, *args, **kwargs)).result()

    async def run_first(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`run`: the pool's connections do not queue behind one another as SQLite's one does."""
        return await self.run(fn, *args, **kwargs)

    async def read(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A read-only call: any connection of the pool reads without waiting for the writes
        (MVCC), so the same as `run`."""
        return await self.run(fn, *args, **kwargs)

    # -- other nodes (store/cluster.py) -------------------------------------------------------

    def wake_others(self) -> None:
        """NOTIFY the other nodes, off the loop; wake-ups asked for while one is on its way
        ride along with it."""
        if self._wake_pending or not self._opened:
            return
        self._wake_pending = True
        self._executor.submit(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        self._wakes.notify()

    def listen_for_wakes(self, wake: Callable[[], None]) -> None:
        self._wakes.listen(asyncio.get_running_loop(), wake)

    async def runs_once_only(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._once_only.held)

    def close(self) -> None:
        self._wakes.close()
        self._once_only.close()
        for raw in getattr(self, "_borrowed", []):
            self._pool.putconn(raw)
        self._borrowed = []
        if self._opened:
            self._opened = False
            self._pool.close()
        self._executor.shutdown(wait=True)


# -- the schema ------------------------------------------------------------------------------------


def migrate(conn: PgConnection) -> None:
    """Run schema.MIGRATIONS not yet applied, each in its own transaction, one node at a time.

    The version is kept in table `schema_version` (SQLite's is PRAGMA user_version); the
    session-level advisory lock makes a second node starting at the same moment wait and then
    find the schema current.
    """
    conn.execute(f"SELECT pg_advisory_lock(?, {_SCHEMA_KEY})", (MIGRATE_LOCK,))
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version BIGINT NOT NULL)")
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        if row is None:
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (0)")
            current = 0
        else:
            current = int(row[0])
        latest = len(MIGRATIONS)
        if current > latest:
            raise StoreError(
                f"store schema version {current} is newer than this program ({latest})"
            )
        for version in range(current, latest):
            with transaction(conn):  # type: ignore[arg-type]
                for statement in _split(MIGRATIONS[version]):
                    translated = dialect.migration(statement)
                    if translated is not None and translated.strip():
                        conn._run(translated, ())
                conn.execute(f"UPDATE {VERSION_TABLE} SET version = ?", (version + 1,))
                reset_identities(conn)
            logger.info("store.migrated", backend="postgresql", version=version + 1)
    finally:
        conn.execute(f"SELECT pg_advisory_unlock(?, {_SCHEMA_KEY})", (MIGRATE_LOCK,))


def schema_version(conn: PgConnection) -> int:
    row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
    return 0 if row is None else int(row[0])


def reset_identities(conn: PgConnection) -> None:
    """Move each identity column's sequence past the largest id its table holds.

    Rows inserted with their ids given (a migration that rebuilds a table, SQLite's way to
    change a column; an export from SQLite) leave the sequence behind, and the next generated
    id would collide.
    """
    columns = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in columns:
        conn.execute(
            f'SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max("{column}"), 0) + 1,'
            f' false) FROM "{table}"',
            (f'"{table}"', column),
        )
