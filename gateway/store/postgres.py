"""The PostgreSQL store: the same repository functions and migrations, on a shared server.

With `[store] backend = "postgresql"` every gateway node uses one database, so any node can take
over another's queue. Nothing in the repository modules (store/jobs.py, faxes.py, ...) knows:
they are handed a `PgConnection`, which speaks like the sqlite3.Connection they were written for
(`execute` with `?` placeholders, rows readable by name and by index, `rowcount`, `lastrowid`)
and translates their SQL once (store/dialect.py).

Transactions keep SQLite's meaning. The store's transactions read, then write (claim a due row,
settle a job from its faxes' states), and were written for SQLite, where `BEGIN IMMEDIATE`
admits one writer at a time. Here the same statement begins a transaction and takes the store's
write lock, a transaction-level advisory lock, so writers on every node take turns exactly as
they do in one SQLite file, whatever isolation level the server defaults to. Reads outside a
transaction see what is committed, as in WAL mode. A write transaction is a few statements of
well under a millisecond each: one writer at a time is ample for fax traffic, and it makes the
cross-node cases (two nodes claiming one row, two webhooks settling one job) the ones the SQLite
store already gets right.

Errors come out as the DB-API exceptions the rest of the gateway already handles (sqlite3's:
IntegrityError for a broken unique key, OperationalError for a server that is down or a lock or
statement that timed out), so a caller has one vocabulary whichever backend runs.

Connections come from a psycopg pool; calls run on a small thread pool (one thread per
connection), never on the event loop. Every connection has a statement timeout and a lock
timeout, and the pool a connect timeout: a server that is down fails a call within seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway import log
from gateway.store import dialect
from gateway.store.cluster import OnceOnlyLock, WakeChannel
from gateway.store.db import Database, StoreError, _split, transaction
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


def _as_sqlite_error(exc: psycopg.Error) -> sqlite3.Error:
    """The DB-API exception of the same kind, as the callers know them (see the docstring)."""
    kind: type[sqlite3.Error]
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        # Waited past lock_timeout or statement_timeout: SQLite's "database is locked", which
        # queue.schedule.resource_error defers without charging the item a pickup.
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
        kind = sqlite3.OperationalError  # a connection that broke under us
    else:
        kind = sqlite3.DatabaseError
    return kind(f"postgresql: {exc}".strip())


class PgCursor:
    """What `PgConnection.execute` returns: the parts of sqlite3.Cursor the store uses."""

    def __init__(self, connection: PgConnection, cursor: psycopg.Cursor[Row]) -> None:
        self._connection = connection
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The id the last INSERT generated (its table's identity column), as SQLite's."""
        row = self._connection.execute("SELECT lastval()").fetchone()
        return None if row is None else int(row[0])

    def fetchone(self) -> Row | None:
        if self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        if self._cursor.description is None:
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
        if command == "ROLLBACK" and self.raw.broken:
            return PgCursor(self, self.raw.cursor())  # nothing to roll back on a dead link
        return self._run(dialect.query(sql), parameters)

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]]) -> PgCursor:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(dialect.query(sql), seq_of_parameters)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc) from exc
        return PgCursor(self, cursor)

    def _begin(self) -> PgCursor:
        self._run("BEGIN", ())
        try:
            return self._run(f"SELECT pg_advisory_xact_lock(%s, {_SCHEMA_KEY})", (WRITE_LOCK,))
        except sqlite3.Error:
            # Not inside the caller's try yet: the transaction is ours to end.
            if not self.raw.broken:
                self._run("ROLLBACK", ())
            raise

    def _run(self, sql: str, parameters: Sequence[Any]) -> PgCursor:
        try:
            cursor = self.raw.execute(sql, tuple(parameters))  # type: ignore[call-overload]
        except psycopg.Error as exc:
            raise _as_sqlite_error(exc) from exc
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
            raise sqlite3.OperationalError(
                f"postgresql: no connection to the store at {self.where} (is the server up?)"
            ) from None

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._call, fn, *args, **kwargs))

    def run_sync(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return self._executor.submit(partial(self._call, fn, *args, **kwargs)).result()

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
