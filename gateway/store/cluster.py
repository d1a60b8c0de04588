"""What gateway nodes sharing one PostgreSQL store tell each other: wake-ups and who runs the
once-only work.

- `WakeChannel`: after a commit that gives the workers something to do (a message accepted, a
  webhook stored), a node wakes its own workers and sends `NOTIFY faxgw_wake` with its own id;
  every other node LISTENs on its own connection and wakes its workers when one arrives. A
  wake-up lost (a node reconnecting) costs at most `queue.scan_interval_seconds`: the periodic
  scan stays the fallback.
- `OnceOnlyLock`: the reconciler and the cleaner run on one node at a time. That node holds a
  session-level advisory lock on a connection of its own; the others try it before each round
  and pass while it is taken. When the holder dies its session ends (the kernel closes the
  socket of a killed process; TCP keepalives find a dead machine) and the next try elsewhere
  takes it.

Both use connections outside the store's pool, so a long LISTEN or a held lock never takes a
connection from the repository functions. Blocking by design: the store's threads call them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from gateway import log

logger = log.get_logger(__name__)

CHANNEL = "faxgw_wake"
ONCE_ONLY_LOCK = 0x46415803
_SCHEMA_KEY = "hashtext(current_schema())"
# How long a LISTEN waits for a notification before it looks whether it should stop.
_POLL_SECONDS = 1.0
# Between attempts to reconnect a lost LISTEN connection.
_RECONNECT_SECONDS = 2.0
# TCP keepalives: a dead peer machine ends the session (and frees its lock) within a minute.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}


def _connect(dsn: str, connect_timeout: float) -> psycopg.Connection[Any]:
    return psycopg.connect(
        dsn, autocommit=True, connect_timeout=max(int(connect_timeout), 1), **_KEEPALIVES
    )


class WakeChannel:
    """NOTIFY the other nodes; LISTEN for theirs on a thread of its own."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        # Sent with each NOTIFY, so the listener passes over its own node's.
        self.identity = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender: psycopg.Connection[Any] | None = None
        self._sender_lock = threading.Lock()

    def notify(self) -> None:
        """Tell the other nodes there is work (blocking; errors logged, never raised: the
        periodic scan covers a lost wake-up)."""
        with self._sender_lock:
            try:
                if self._sender is None or self._sender.broken or self._sender.closed:
                    self._sender = _connect(self.dsn, self.connect_timeout)
                self._sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.identity))
            except psycopg.Error as exc:
                logger.debug("cluster.notify_failed", error=str(exc))
                self._close_sender()

    def listen(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """Call `wake` on `loop` for every other node's NOTIFY, until `close`."""
        self._thread = threading.Thread(
            target=self._listen, args=(loop, wake), name="store-listen", daemon=True
        )
        self._thread.start()

    def _listen(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                with _connect(self.dsn, self.connect_timeout) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Work may have come while we were not listening.
                    loop.call_soon_threadsafe(wake)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_POLL_SECONDS):
                            if note.payload != self.identity:
                                loop.call_soon_threadsafe(wake)
            except (psycopg.Error, OSError) as exc:
                if self._stop.is_set():
                    return
                logger.warning("cluster.listen_lost", error=str(exc))
            except RuntimeError:
                return  # the loop closed under us: the process is stopping
            self._stop.wait(_RECONNECT_SECONDS)

    def _close_sender(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(psycopg.Error):
                self._sender.close()
            self._sender = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * _POLL_SECONDS)
        with self._sender_lock:
            self._close_sender()


class OnceOnlyLock:
    """The advisory lock of the once-only work, held on a connection of its own."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._guard = threading.Lock()

    def held(self) -> bool:
        """Whether this node holds the lock now, taking it if it is free (blocking)."""
        with self._guard:
            try:
                if self._conn is not None and self._held:
                    self._conn.execute("SELECT 1")  # still our session, so still our lock
                    return True
                if self._conn is None or self._conn.broken or self._conn.closed:
                    self._conn = _connect(self.dsn, self.connect_timeout)
                row = self._conn.execute(
                    f"SELECT pg_try_advisory_lock(%s, {_SCHEMA_KEY})", (ONCE_ONLY_LOCK,)
                ).fetchone()
            except psycopg.Error as exc:
                logger.warning("cluster.once_only_lock_lost", error=str(exc))
                self._drop()
                return False
            self._held = bool(row and row[0])
            if self._held:
                logger.info("cluster.once_only_taken")
            return self._held

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._guard:
            self._drop()  # the session ends, and the lock with it
