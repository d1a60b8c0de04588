"""Readiness: GET /readyz runs named checks of what the gateway depends on and says what is wrong.

/healthz (gateway/ops/httpd.py) only says the process and its loop are alive; /readyz says whether
the gateway can do its work right now: the store takes a write, the carrier answers with our
key, the storage and the relay are reachable. A failing dependency does not stop the gateway
(mail stays queued and is retried), so this is where an operator or a monitor learns about it.

Each check is a coroutine function that returns when all is well and raises when not; the
exception's text is the reason shown, after log redaction so that no key or token leaks into a
monitoring system. Checks run concurrently, each within a timeout, and one result is shared
by every request for a second or two, so a storm of probes costs one round of checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway import log
from gateway.store import Database
from gateway.store.meta import set_meta

logger = log.get_logger(__name__)

Check = Callable[[], Awaitable[None]]

OK = "ok"
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_CACHE_SECONDS = 2.0
# A reason is one readable line in a JSON answer, not a traceback.
MAX_REASON_LENGTH = 500


@dataclass(frozen=True)
class Readiness:
    """One round of checks: each check's name with "ok" or the reason it failed."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(result == OK for result in self.checks.values())

    def as_json(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "not ready", "checks": dict(self.checks)}


class Health:
    """The named readiness checks of one gateway and the /readyz route that runs them."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._checks: dict[str, tuple[Check, float]] = {}
        self._cached: tuple[float, Readiness] | None = None
        self._running: asyncio.Task[Readiness] | None = None
        self._failing: dict[str, str] = {}

    def add_check(self, name: str, check: Check, *, timeout: float | None = None) -> None:
        """Run `check()` on every (uncached) readiness probe; it raises to say what is wrong."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = (check, self.timeout if timeout is None else timeout)
        self._cached = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/readyz", self._readyz)
        app.on_cleanup.append(self._cleanup)

    async def readiness(self) -> Readiness:
        """The latest result if it is fresh enough, else a new round shared by all callers."""
        if self._cached is not None:
            finished_at, readiness = self._cached
            if self._clock() - finished_at < self.cache_seconds:
                return readiness
        if self._running is None:
            self._running = asyncio.create_task(self._evaluate(), name="readiness-checks")
        # shield: a prober that hangs up must not cancel the round other probers wait for.
        return await asyncio.shield(self._running)

    async def _readyz(self, _request: web.Request) -> web.Response:
        readiness = await self.readiness()
        return web.json_response(
            readiness.as_json(),
            status=200 if readiness.ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def _evaluate(self) -> Readiness:
        try:
            names = list(self._checks)
            results = await asyncio.gather(
                *(self._run_check(name, *self._checks[name]) for name in names)
            )
            readiness = Readiness(dict(zip(names, results, strict=True)))
            self._cached = (self._clock(), readiness)
            self._log_changes(readiness)
            return readiness
        finally:
            self._running = None

    async def _run_check(self, name: str, check: Check, seconds: float) -> str:
        try:
            async with asyncio.timeout(seconds):
                await check()
        except TimeoutError:
            return f"no answer within {seconds:g} s"
        except Exception as exc:
            return _reason(exc)
        return OK

    def _log_changes(self, readiness: Readiness) -> None:
        # Once per change, not once per probe: a monitor polling every few seconds must not
        # fill the journal with the same line.
        for name, result in readiness.checks.items():
            before = self._failing.get(name)
            if result != OK and result != before:
                self._failing[name] = result
                logger.warning("health.check_failed", check=name, reason=result)
            elif result == OK and before is not None:
                del self._failing[name]
                logger.info("health.check_recovered", check=name)

    async def _cleanup(self, _app: web.Application) -> None:
        task = self._running
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = log.redact(text)
    if len(text) > MAX_REASON_LENGTH:
        text = text[: MAX_REASON_LENGTH - 3] + "..."
    return text


HEALTH_PROBE_KEY = "health.store_written_at"


def store_check(db: Database) -> Check:
    """A check that the store takes a durable write (disk full, read-only or locked fails it)."""

    async def check() -> None:
        await db.run(_write_probe)

    return check


def _write_probe(conn: sqlite3.Connection) -> None:
    # A real committed write on the store's own thread: the same path (BEGIN IMMEDIATE,
    # synchronous=FULL commit) every accepted message takes before its 250.
    set_meta(conn, HEALTH_PROBE_KEY, repr(time.time()))
