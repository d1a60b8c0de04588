"""Log a flood as a few lines with counts, not one line per event.

A connection flood, a guessing run or a loop out of file descriptors repeats one event
thousands of times a second; a line (or a traceback) for each would fill the journal and hide
everything else. A `Tally` logs the first occurrence at once, counts the rest, and writes one
summary with the counts when its interval (a minute) ends. `LoopErrors` is the event loop's
exception handler built on it.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway import log

logger = log.get_logger(__name__)

INTERVAL = 60.0
# Summaries name the clients with the most events, not every one of a spread-out flood.
_TOP = 10


class Tally:
    """One repeated event: `event` logged at the first `add` of each kind in an interval,
    `summary` with the counts of the others when the interval ends."""

    def __init__(
        self,
        event: str,
        summary: str,
        *,
        level: str = "warning",
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.summary = summary
        self.level = level
        self.interval = interval
        self._clock = clock
        self._started: float | None = None
        self._seen: set[str] = set()
        self._kinds: Counter[str] = Counter()
        self._clients: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, kind: str = "", client: str | None = None, **fields: Any) -> None:
        """Count one event; the first of its kind in the interval is logged with `fields`."""
        now = self._clock()
        if self._started is not None and now - self._started >= self.interval:
            self.flush()
        if self._started is None:
            self._started = now
            self._schedule()
        if kind not in self._seen:
            self._seen.add(kind)
            self._log(self.event, kind=kind or None, client=client, **fields)
            return
        self._kinds[kind] += 1
        if client is not None:
            self._clients[client] += 1

    def flush(self) -> None:
        """Log the counts since the first event (if there were more) and start over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._started is None:
            return
        count = sum(self._kinds.values())
        if count:
            fields: dict[str, Any] = {
                "count": count,
                "seconds": round(self._clock() - self._started, 1),
            }
            if set(self._kinds) != {""}:
                fields["counts"] = dict(self._kinds)
            if self._clients:
                fields["clients"] = dict(self._clients.most_common(_TOP))
                fields["distinct_clients"] = len(self._clients)
            self._log(self.summary, **fields)
        self._started = None
        self._seen.clear()
        self._kinds.clear()
        self._clients.clear()

    def _schedule(self) -> None:
        # Without a timer the last minute of a flood that stopped would never be summed up.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.interval, self.flush)

    def _log(self, event: str, **fields: Any) -> None:
        getattr(logger, self.level)(event, **{k: v for k, v in fields.items() if v is not None})


# Errors of the accept loop and of sockets when the process is out of resources: their
# traceback says nothing the kind does not, and they come by the thousand.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class LoopErrors:
    """The event loop's exception handler: each kind of error once per interval, then counts.

    asyncio's default handler writes a multi-line traceback to the stdlib log for every error
    of a callback or transport, and for every failed accept() when descriptors run out; this
    one logs JSON, without a traceback for resource errors, and counts repeats."""

    def __init__(
        self, *, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tally = Tally(
            "loop.error", "loop.errors", level="error", interval=interval, clock=clock
        )

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message") or "")
        if isinstance(error, OSError) and error.errno in _RESOURCE_ERRNOS:
            kind = errno.errorcode.get(error.errno or 0, "OSError")
            self.tally.add(kind, message=message, error=str(error))
        elif error is not None:
            self.tally.add(type(error).__name__, message=message, exc_info=error)
        else:
            self.tally.add("message", message=message)

    def flush(self) -> None:
        self.tally.flush()
