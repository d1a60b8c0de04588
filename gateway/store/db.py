"""One SQLite connection, used from one thread, with the schema migrated on open; and a second,
read-only one on a thread of its own for the reads that must not wait behind the writes."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from gateway import log
from gateway.fsutil import PRIVATE_FILE, fsync_dir, make_private_dirs
from gateway.store.schema import MIGRATIONS
from gateway.store.thread import StoreThread

logger = log.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StoreError(Exception):
    """The store could not be used (disk full, corrupt file, wrong schema version)."""


class StoreUnavailable(sqlite3.OperationalError):
    """The store's server could not be reached, or the connection to it broke mid-call (down,
    restarting, the network): transient, and whether the call's last COMMIT took effect may be
    unknown. An OperationalError, so every caller that answers 451 or 500 on one still does;
    the runner (queue/runner.py) hands back the claims of a round that met one. Only a store
    on a server raises it (store/postgres.py)."""


def connect(path: Path) -> sqlite3.Connection:
    make_private_dirs(path.parent)
    _create_private(path)
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (see `transaction`).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    # WAL lets the queue tools read while the daemon writes; synchronous=FULL makes every commit
    # durable before we answer 250 or 200.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    migrate(conn)
    return conn


def _create_private(path: Path) -> None:
    """Make the store file 0600 before SQLite opens it, whatever the umask.

    The store holds live signed media links. SQLite creates a missing file with 0644 less the
    umask, and gives its -wal and -shm files the mode of the database file, so making the empty
    file ourselves (SQLite takes an empty file as a new database) makes all three private. A
    store that exists keeps its mode; one every local user can read (made by an earlier version
    started outside systemd) is named in a warning, since changing it may not be ours to do.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & stat.S_IRWXO:
            logger.warning(
                "store.permissions", path=str(path), mode=oct(mode), fix=f"chmod 600 {path}*"
            )
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = len(MIGRATIONS)
    if current > latest:
        raise StoreError(f"store schema version {current} is newer than this program ({latest})")
    for version in range(current, latest):
        with transaction(conn):
            for statement in _split(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version + 1}")


def _split(script: str) -> Iterator[str]:
    # executescript() would COMMIT our transaction; run statement by statement instead.
    # Comments are dropped first: a ';' or quote inside one would mislead the splitter.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    buffer = ""
    for line in lines:
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


@contextmanager
def transaction(
    conn: sqlite3.Connection, *, row_locks: bool = False
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Nested use is a bug.

    `row_locks`: the transaction locks every row it reads to decide what to write, and writes
    no other (a claim: store/claims.py). SQLite admits one writer at a time all the same; a
    store on a server lets such transactions run side by side (store/postgres.py).
    """
    begin = getattr(conn, "begin_row_locked", None) if row_locks else None
    if begin is not None:
        begin()
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (a deferred constraint, a full disk) can leave the transaction
        # open, and then every later BEGIN on this connection would fail.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Database:
    """The store of one gateway: a file in data.dir, a connection, and the thread it lives on."""

    # Whether other gateway nodes may use this store at the same time (store/postgres.py).
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        # One thread for the connection; the writes a client waits on go first (store/thread.py).
        self._executor = StoreThread("store")
        self._conn: sqlite3.Connection | None = None
        # The reader (`read`): opened on its thread at its first use, after `open` migrated.
        self._reader_executor: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None
        # Held while a read is queued and while `close` starts: once it has, no read is.
        self._reader_lock = threading.Lock()
        self._closing = False

    def open_sync(self) -> Database:
        self._conn = self._executor.submit(connect, self.path).result()
        return self

    async def open(self) -> Database:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect, self.path)
        return self

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, ...)` on the store's thread without blocking the loop (in a copy of
        the caller's context, as asyncio.to_thread: store/claims.py notes a worker's claims)."""
        loop = asyncio.get_running_loop()
        call = partial(fn, self.conn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, contextvars.copy_context().run, call)

    async def run_first(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`run`, ahead of the calls queued with `run` that have not started: for the writes a
        client is waiting on (store/commit.py's batches: a 250, a webhook's 200), which would
        otherwise wait behind the queue workers' transactions."""
        loop = asyncio.get_running_loop()
        call = partial(fn, self.conn, *args, **kwargs)
        future = self._executor.submit_first(contextvars.copy_context().run, call)
        return await asyncio.wrap_future(future, loop=loop)

    def run_sync(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """The same for command-line tools, which have no loop."""
        return self._executor.submit(partial(fn, self.conn, *args, **kwargs)).result()

    async def read(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run the read-only `fn(conn, ...)` on the store's reader: a connection and a thread of
        its own, so it waits for none of the writes queued on the store's thread (a group
        commit's fsync, the workers' claims). WAL lets it read while they write; each call
        sees every transaction committed before it started (a COMMIT that returned, anywhere),
        none still in progress. For the SMTP session's daily-limit count at RCPT, which holds
        every session's RCPT while it runs."""
        loop = asyncio.get_running_loop()
        call = partial(self._read, fn, *args, **kwargs)
        with self._reader_lock:
            if self._conn is None or self._closing:
                raise StoreError("store is not open")
            if self._reader_executor is None:
                self._reader_executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="reader"
                )
            future = self._reader_executor.submit(contextvars.copy_context().run, call)
        return await asyncio.wrap_future(future, loop=loop)

    def _read(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if self._reader is None:
            reader = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            reader.row_factory = sqlite3.Row
            # The schema is the writer's (migrated on open); this one must never write.
            reader.execute("PRAGMA query_only=ON")
            reader.execute("PRAGMA busy_timeout=30000")
            self._reader = reader
        return fn(self._reader, *args, **kwargs)

    # -- other nodes: a SQLite store has none (a shared store: store/postgres.py) -------------

    def wake_others(self) -> None:
        """Tell the other nodes' workers there is work: no one to tell."""

    def listen_for_wakes(self, wake: Callable[[], None]) -> None:
        """Call `wake` when another node says there is work: none will."""

    async def runs_once_only(self) -> bool:
        """Whether this node does the work one node does for all (gateway/queue/once.py)."""
        return True

    def close(self) -> None:
        """Close the connections; a read already queued still runs first, none starts after.

        The reader is closed on its thread after the reads queued before (each may still use
        it, the first may open it), so a read on its way during the close does not open a
        connection nobody closes."""
        with self._reader_lock:
            self._closing = True
            readers, self._reader_executor = self._reader_executor, None
        if readers is not None:
            readers.submit(self._close_reader)
            readers.shutdown(wait=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._executor.submit(conn.close).result()
        self._executor.shutdown(wait=True)

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
