"""The webhook intake goes first: the events worker gives way while webhooks pour in.

Answering a webhook is a parse, a row in a group commit and a 200; applying it afterwards is a
claim, a GET /faxes/{id} to the carrier and a mark, about twice the CPU, on the same event
loop and GIL. The carrier waits for each answer (and sends again what it thinks was not
received); nobody waits for the verification to the millisecond: the event is durable once it
was answered. So while webhooks arrive fast (BUSY_COUNT of them within BUSY_WINDOW seconds,
over 100 a second) the events worker's next round waits, as the pipeline's rounds wait for
SMTP sessions in DATA (gateway/queue/foreground.py).

Bounded, and nothing is lost: a wait lasts at most MAX_WAIT seconds. A wait that reached its
bound puts the worker in catch-up: it works its backlog down (until a round claims less than
a full batch) before it gives way again. A burst shorter than MAX_WAIT is answered at the
intake's own cost and applied right after it; a flood that does not end is applied with a lag
of about MAX_WAIT, at the rate the two share the process, as without any giving way. Single
webhooks (an office's dozen a minute, the inbound faxes of a busy line) never make anything
wait. The events stay in the store meanwhile, so a crash or a restart loses nothing; other
nodes sharing the store give way to their own intake only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

# Busy: this many webhooks stored within this many seconds (a rate above 100 a second, ten
# times the inbound figure's 10 a second; an office's carrier sends a few a minute).
BUSY_COUNT = 10
BUSY_WINDOW = 0.1
# The longest the events worker waits in one go; then it catches up before waiting again.
MAX_WAIT = 2.0


class Intake:
    """What the webhook endpoint tells the events worker: `stored()` per event stored;
    the worker awaits `give_way()` before a round and calls `caught_up()` after a round that
    emptied its queue."""

    def __init__(
        self,
        *,
        busy_count: int = BUSY_COUNT,
        busy_window: float = BUSY_WINDOW,
        max_wait: float = MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if busy_count < 1 or busy_window <= 0 or max_wait < 0:
            raise ValueError("busy_count >= 1, busy_window > 0 and max_wait >= 0")
        self.busy_window = busy_window
        self.max_wait = max_wait
        self.clock = clock
        self._stored: deque[float] = deque(maxlen=busy_count)
        self._catching_up = False
        # Rounds that waited, and the seconds waited in all (for the benchmark and tests).
        self.waits = 0
        self.waited = 0.0

    def stored(self) -> None:
        """A webhook's event was committed (and answered)."""
        self._stored.append(self.clock())

    @property
    def busy(self) -> bool:
        """Whether webhooks are arriving fast now."""
        stored = self._stored
        return len(stored) == stored.maxlen and self.clock() - stored[0] <= self.busy_window

    @property
    def catching_up(self) -> bool:
        return self._catching_up

    async def give_way(self) -> None:
        """Until the intake is quiet, at most `max_wait` seconds; at once while catching up."""
        if self._catching_up or not self.busy:
            return
        started = self.clock()
        self.waits += 1
        try:
            while self.busy:
                if self.clock() - started >= self.max_wait:
                    self._catching_up = True
                    return
                # A look every window: the intake is quiet once a window passes without
                # BUSY_COUNT webhooks, so waiting longer between looks would only add lag.
                await asyncio.sleep(self.busy_window)
        finally:
            self.waited += self.clock() - started

    def caught_up(self) -> None:
        """A round found less than a full batch: the backlog is worked down."""
        self._catching_up = False
