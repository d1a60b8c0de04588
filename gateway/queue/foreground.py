"""Work that goes first: a round of a worker waits while more urgent work is in progress.

The SMTP sessions and every queue worker share one process, one event loop and one GIL, and
on a small machine the same cores as the document workers. A client waiting for its 250 is
the one thing here someone is waiting on; the pipeline behind it (prepare, upload, submit,
reports...) can start a round a few milliseconds later. So while any session is inside DATA
(reading the message, its check, its spool write and commit) a worker's next round waits for
the sessions to finish, at most MAX_WAIT_SECONDS: under a steady stream of mail the pipeline
slows down and never stops, and with no mail arriving nothing waits at all. The stages on the
way to the carrier (below) wait only for a crowd, FRONT_CROWD sessions in DATA at once (a
flood), not for the one message of a steady stream: that message's 250 is already near, while
every wait of theirs adds to the time from a 250 to its POST /faxes, which is the latency a
sender sees (at 20 msg/s some session was in DATA a third of the time, and each of the three
front stages' rounds waited for it).

The same rule, one level down, between the workers (queue/runner.py `front`): the stages on
the way from a 250 to the carrier's POST /faxes (prepare, upload, submit) are foreground work
for the ones behind them (events, reports, the outbox, cleanup...). A front stage is marked
busy from the start of a round until a round of it finds nothing (`mark`), so while a burst
is on its way to the carrier the other workers wait up to FRONT_MAX_WAIT_SECONDS before
each round, and before each item of a round (`give_way`, which their loops call between
items: their rounds are batches of up to 50): they go on, more slowly, and catch up once the
front stages are idle. A wait that runs out its bound (the front stages still busy: a load
that lasts) is followed by as long again without waits, before its rounds as before its items
(one rule, `give_way`, for both: a worker whose rounds are one item or one claimed batch, such
as the events worker, is not held to a round per bound while the others' items go on), so
under any load a back stage keeps at least half of the time for its work and its backlog
moves at half its speed or more, never four rounds a second. Nothing is claimed while a worker
waits, so nothing waits with a claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

# The longest a round waits for DATA to end: a bound on what a flood of mail costs the
# pipeline per round, far below a round's own cost of a store commit or an HTTP call.
MAX_WAIT_SECONDS = 0.05
# The longest a back stage's round waits for the front stages: long beside a front round (a
# few ms an item), short enough that a backlog behind them still moves (the events worker's
# 50 a round make 200 events a second) and that an idle front stage costs it nothing.
FRONT_MAX_WAIT_SECONDS = 0.25
# Sessions in DATA at once that make a crowd the front stages wait for: two is already more
# than a steady stream has at a time but for moments, and a flood has nearly all its sessions.
FRONT_CROWD = 2


class Foreground:
    """Counts the work in progress that goes first; `quiet()` waits until there is none."""

    def __init__(self, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        self.active = 0
        self._marked: set[str] = set()
        # By `below`: set while fewer than that many pieces of work are in progress.
        self._fewer: dict[int, asyncio.Event] = {}

    @property
    def busy_now(self) -> bool:
        return self.in_progress > 0

    @property
    def in_progress(self) -> int:
        """Pieces of work now: each one in `busy`, and each name marked."""
        return self.active + len(self._marked)

    def _update(self) -> None:
        count = self.in_progress
        for below, event in self._fewer.items():
            if count < below:
                event.set()
            else:
                event.clear()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one piece of foreground work (one DATA command)."""
        self.active += 1
        self._update()
        try:
            yield
        finally:
            self.active -= 1
            self._update()

    def mark(self, name: str, busy: bool) -> None:
        """Foreground work that spans several steps under one name (a front stage with items
        left): busy from `mark(name, True)` until `mark(name, False)`."""
        if busy:
            self._marked.add(name)
        else:
            self._marked.discard(name)
        self._update()

    async def quiet(self, *, below: int = 1) -> None:
        """Until fewer than `below` pieces of foreground work are in progress (by default:
        none), or `max_wait` seconds."""
        if self.in_progress < below:
            return
        fewer = self._fewer.get(below)
        if fewer is None:
            fewer = self._fewer[below] = asyncio.Event()
        self._update()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fewer.wait(), self.max_wait)


@dataclass
class _GivingWay:
    """What a worker behind the front stages gives way to, and until when it need not (the
    event loop's clock): after a wait that ran out its bound, as long again without one."""

    foreground: Foreground
    free_until: float = 0.0


# The work the current worker gives way to between its items (set by queue/runner.py in the
# task of each worker behind the front stages; unset elsewhere: tests, one-off commands).
_GIVE_WAY_TO: ContextVar[_GivingWay | None] = ContextVar("gateway_give_way_to", default=None)


def giving_way_to(foreground: Foreground) -> None:
    """The current task's worker gives way to `foreground` between its items."""
    _GIVE_WAY_TO.set(_GivingWay(foreground))


async def give_way() -> None:
    """Between two items of a round: wait while work that goes first is in progress, at most
    its bound, unless a wait ran out its bound just before (no wait at all outside a worker
    behind the front stages)."""
    giving = _GIVE_WAY_TO.get()
    if giving is None or not giving.foreground.busy_now:
        return
    loop = asyncio.get_running_loop()
    if loop.time() < giving.free_until:
        return
    await giving.foreground.quiet()
    if giving.foreground.busy_now:  # the bound ran out: the next stretch goes without waits
        giving.free_until = loop.time() + giving.foreground.max_wait
