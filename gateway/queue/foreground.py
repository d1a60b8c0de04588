"""Accepting mail goes first: the queue workers' rounds wait while SMTP sessions are in DATA.

The SMTP sessions and every queue worker share one process, one event loop and one GIL, and
on a small machine the same cores as the document workers. A client waiting for its 250 is
the one thing here someone is waiting on; the pipeline behind it (prepare, upload, submit,
reports...) can start a round a few milliseconds later. So while any session is inside DATA
(reading the message, its check, its spool write and commit) a worker's next round waits for
the sessions to finish, at most MAX_WAIT_SECONDS: under a steady stream of mail the pipeline
slows down and never stops, and with no mail arriving nothing waits at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

# The longest a round waits for DATA to end: a bound on what a flood of mail costs the
# pipeline per round, far below a round's own cost of a store commit or an HTTP call.
MAX_WAIT_SECONDS = 0.05


class Foreground:
    """Counts the work in progress that goes first; `quiet()` waits until there is none."""

    def __init__(self, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one piece of foreground work (one DATA command)."""
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def quiet(self) -> None:
        """Until no foreground work is in progress, or `max_wait` seconds."""
        if self.active == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.max_wait)
