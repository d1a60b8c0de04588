"""The runner every queue worker shares: one loop per worker, woken by commits or due times.

Every worker is a `QueueWorker`: keyword-only `config`, `db` and `clock`, a `schedule` read
from its configuration (so a reload is one assignment of `config`), `async run_once() -> int`
that handles the items of its queue that are due and returns how many (0 = nothing to do),
and `async next_due()`, when its earliest waiting item is due. Its state lives in the store,
so the runner keeps none: each loop calls `run_once` while it finds work, then sleeps until
`wake()` (called after a commit that created work: the SMTP handler queuing a job, a webhook
stored), the earliest due time, or the scan interval, whichever comes first. The scan is only
the fallback; a deferred item is tried when it is due. A round that handled something wakes
the workers it feeds; one whose items are worked on at once (a batch of prepares) wakes them
as each item is committed (`hand_on`), so no item waits for the slowest of its round.

A worker that raises is logged with its traceback and called again after a pause that doubles
with each consecutive failure, within bounds: it never dies and never spins. Stopping lets the
current `run_once` finish (each is a safe point: a step is committed or not started) and
cancels only past the timeout. Tests use `run_until_idle` instead of sleeping.

Each call of `run_once` is a round of claims (store/claims.py): the claims it makes are noted,
and when the store was lost under the round (PostgreSQL restarting mid-step) they are handed
back before the worker's next round, once the store answers again. Every step a store outage
cut short is so taken up again at once by its own process, whichever worker it was and whatever
lease its claim took, instead of after that lease; a round is over, so none of its steps still
runs.

A failure that is the store's (the server unreachable: `StoreUnavailable`, raised or met by the
round) is not the worker's: instead of the doubling pause alone, the worker waits for the store
to answer again. One probe at a time, shared by every worker waiting (`_store_back`), looks every
`_STORE_POLL` seconds; the worker's next round starts as soon as one answers, the pause still
its longest wait. So work resumes within about a second of the store's return, however long the
outage made the pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol

from gateway import log
from gateway.config import Config
from gateway.queue.backoff import Random, backoff_delay
from gateway.queue.foreground import (
    FRONT_CROWD,
    FRONT_MAX_WAIT_SECONDS,
    Foreground,
    give_way,
    giving_way_to,
)
from gateway.queue.schedule import Clock, Schedule
from gateway.store import Database
from gateway.store.claims import Taken, hand_back, round_of_claims
from gateway.store.db import StoreUnavailable

logger = log.get_logger(__name__)

# Shortest sleep before a due item is looked at again, and the one after a round that found
# nothing although something was due (a paused carrier, an item another step holds): long
# enough not to spin, short enough that a due item waits about a second at most.
_MIN_WAIT = 0.01
_DUE_BUT_IDLE_WAIT = 1.0
# Between looks whether the store answers again, while a worker waits out an outage.
_STORE_POLL = 0.5


# Wakes the named stage for the current worker's finished item (set by the runner in each
# worker's task; unset elsewhere: tests running rounds themselves, one-off commands).
_HAND_ON: ContextVar[Callable[[str], None] | None] = ContextVar("gateway_hand_on", default=None)


def hand_on(stage: str) -> None:
    """An item of the current round is committed and is `stage`'s work: it looks now, not once
    the round ends (a round of several items at once would make each item wait for the slowest
    of them, a prepared job for the others' documents). Only that stage: the others the worker
    feeds (reports, cleanup) have work only from a failed or held item, and the round's end
    wakes them, as before; woken per item, each would run a round of queries per job."""
    wake = _HAND_ON.get()
    if wake is not None:
        wake(stage)


class Worker(Protocol):
    name: str

    async def run_once(self) -> int: ...


class QueueWorker(ABC):
    """What every queue's worker shares (Mailman's runner base class)."""

    name: ClassVar[str]

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        rng: Random = random,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.rng = rng

    @property
    def schedule(self) -> Schedule:
        """The retry rule of the current configuration (a reload replaces `config` only)."""
        return Schedule(self.config.queue, self.clock, self.rng)

    @abstractmethod
    async def run_once(self) -> int:
        """Handle the items of this queue that are due; how many (0: nothing to do)."""

    async def next_due(self) -> float | None:
        """When the earliest waiting item of this queue is due (by `clock`); None: no idea,
        the scan will look."""
        return None


class Runner:
    """Runs each worker in its own task on the current loop (a daemon component)."""

    def __init__(
        self,
        workers: Sequence[Worker],
        *,
        scan_interval: float,
        stop_timeout: float = 10.0,
        error_pause: float = 1.0,
        max_error_pause: float = 60.0,
        db: Database | None = None,
        feeds: Mapping[str, Sequence[str]] | None = None,
        foreground: Foreground | None = None,
        front: Sequence[str] = (),
    ) -> None:
        """`db`: the store the workers claim from, where a round a store outage interrupted
        hands its claims back (None: rounds are not noted). `feeds`: for a worker whose
        finished items are only some others' work, their names (a round that handled
        something wakes just those; a worker not listed wakes every other). `foreground`: work
        that goes first (SMTP sessions in DATA): a round waits while it is busy, within its
        bound (a front stage's only while it is crowded, FRONT_CROWD). `front`: the workers
        whose work goes before the others' (the stages on the way to the carrier): while one
        of them has items, the others' rounds wait, each at most FRONT_MAX_WAIT_SECONDS
        (queue/foreground.py)."""
        names = [worker.name for worker in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique: {names}")
        if scan_interval <= 0:
            raise ValueError("scan_interval must be positive")
        self.workers = list(workers)
        self.scan_interval = scan_interval
        self.stop_timeout = stop_timeout
        self.error_pause = error_pause
        self.max_error_pause = max(max_error_pause, error_pause)
        self.db = db
        self._wakeups = {worker.name: asyncio.Event() for worker in self.workers}
        self.feeds = {name: tuple(names) for name, names in (feeds or {}).items()}
        self.foreground = foreground
        self.front = frozenset(front)
        self._front = Foreground(max_wait=FRONT_MAX_WAIT_SECONDS)
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._probe: asyncio.Task[bool] | None = None

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks.values())

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("runner already started")
        self._stopping.clear()
        for worker in self.workers:
            self._tasks[worker.name] = asyncio.create_task(
                self._loop(worker), name=f"worker:{worker.name}"
            )
        logger.info("workers.started", workers=[worker.name for worker in self.workers])

    def wake(self, *names: str) -> None:
        """Something was committed that may be work: the workers `names` (every worker, when
        none is named) look now.

        Cheap and safe to call often: a worker already running finishes its round, sees the
        flag and runs once more, so a wake during a round is never lost. Naming the one queue
        a commit fed (a webhook's event: the events worker) spares the others a round each:
        a round that finds nothing still costs a claim and a look at the next due time.
        """
        for name, event in self._wakeups.items():
            if not names or name in names:
                event.set()

    def request_stop(self) -> None:
        """No worker starts another round from now on; `stop()` then waits for the rounds
        running (for a caller that must cut those rounds short in between)."""
        self._stopping.set()

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (a grace period)
        """Let each worker finish its current round, then end; cancel past `timeout`."""
        if not self._tasks:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping.set()
        tasks = list(self._tasks.values())
        try:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
        except asyncio.CancelledError:
            # Our caller gave up waiting (the daemon's own shutdown timeout): do not leave the
            # loops running behind its back.
            pending = {task for task in tasks if not task.done()}
            await self._cancel(pending | self._probe_left())
            raise
        if pending:
            logger.warning(
                "workers.stop_timeout",
                timeout=timeout,
                workers=sorted(name for name, t in self._tasks.items() if t in pending),
            )
            await self._cancel(pending)
        await self._cancel(self._probe_left())
        self._tasks.clear()
        logger.info("workers.stopped")

    def _probe_left(self) -> set[asyncio.Task[Any]]:
        """The store probe, if one still runs: no worker waits for it once they have ended
        (the store may still be down, and it would run on)."""
        probe, self._probe = self._probe, None
        return {probe} if probe is not None and not probe.done() else set()

    async def _cancel(self, tasks: set[asyncio.Task[Any]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, worker: Worker) -> None:
        log.bind(worker=worker.name)
        wakeup = self._wakeups[worker.name]
        failures = 0
        interrupted: list[Taken] = []
        front = worker.name in self.front
        if self.front and not front:
            giving_way_to(self._front)  # this task's: between the items of each round too
        _HAND_ON.set(lambda stage: self._feed(worker.name, only=stage))
        while not self._stopping.is_set():
            # Cleared before the round, so a wake() arriving while it runs triggers another.
            wakeup.clear()
            if self.foreground is not None:
                # A front stage waits for a flood only (queue/foreground.py FRONT_CROWD).
                await self.foreground.quiet(below=FRONT_CROWD if front else 1)
            if self.front and not front:
                # The rule of the waits between items (queue/foreground.py give_way): after a
                # wait that ran out its bound, rounds too start without one for as long again.
                await give_way()
            # A front stage is busy from its round's start until a round finds nothing.
            self._front.mark(worker.name, front)
            store_lost = False
            try:
                # Raises while the store is still away: the worker pauses as for any failure.
                interrupted = await self._hand_back(interrupted)
                with round_of_claims() as round_:
                    try:
                        # int(): a worker returning something else is a bug to log, not to die of.
                        handled = int(await worker.run_once())
                    finally:
                        interrupted = round_.interrupted()
                        store_lost = round_.store_lost
            except Exception as exc:
                self._front.mark(worker.name, False)
                failures += 1
                pause = backoff_delay(failures, self.error_pause, self.max_error_pause)
                logger.exception("worker.crashed", failures=failures, pause=round(pause, 3))
                if store_lost or isinstance(exc, StoreUnavailable):
                    # The store's failure, not the worker's: on again once it answers.
                    await self._store_back(pause)
                else:
                    # Only stopping shortens the pause: wakes may come far more often.
                    await self._wait(self._stopping, pause)
                continue
            failures = 0
            if interrupted:
                continue  # handed back before anything else (or a pause, if still away)
            if handled > 0:
                # What one stage finished is the next stage's work (a prepared job, a queued
                # report mail): the others look now rather than at their next scan (only
                # those it feeds, where that is known: one item a round, so each item of a
                # stage would otherwise cost every idle worker a round of queries).
                self._feed(worker.name)
                # More may be due; yield so one busy queue cannot starve the loop.
                await asyncio.sleep(0)
                continue
            self._front.mark(worker.name, False)
            await self._wait_any(wakeup, await self._idle_seconds(worker))
        self._front.mark(worker.name, False)
        if interrupted:
            # Stopping: a last try, so that another node need not wait out the leases.
            with contextlib.suppress(Exception):
                await self._hand_back(interrupted)

    def _feed(self, name: str, *, only: str | None = None) -> None:
        """Wake the workers `name`'s finished items are work for (`only`: that one of them)."""
        fed = self.feeds.get(name)
        for other, event in self._wakeups.items():
            if other == name or (fed is not None and other not in fed):
                continue
            if only is None or other == only:
                event.set()

    async def _hand_back(self, interrupted: list[Taken]) -> list[Taken]:
        """Hand back the claims of a round the store was lost under; what is left to hand
        back (nothing: it raises while the store is away)."""
        if not interrupted or self.db is None:
            return []
        handed = await self.db.run(hand_back, interrupted)
        logger.warning("claims.handed_back", claims=len(interrupted), handed=handed)
        return []

    async def _store_back(self, seconds: float) -> None:
        """Until the store answers again (looked at every `_STORE_POLL` seconds), stop, or
        `seconds` pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return
            await self._wait(self._stopping, min(_STORE_POLL, left))
            if self._stopping.is_set() or loop.time() >= deadline:
                return
            if await self._store_answers():
                return

    async def _store_answers(self) -> bool:
        """Whether the store answers a query now. One probe runs at a time, whoever asks; a
        store that is down fails it within its connect timeout."""
        if self.db is None:
            return True  # nothing to ask: the pause was the worker's own round
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._ping(self.db), name="store-probe")
        # shield: a worker stopped while waiting does not cancel the others' probe.
        return await asyncio.shield(self._probe)

    @staticmethod
    async def _ping(db: Database) -> bool:
        try:
            await db.run(_select_one)
        except Exception:
            return False
        return True

    async def _idle_seconds(self, worker: Worker) -> float:
        """How long `worker` may sleep: until its earliest due item, at most a scan interval."""
        next_due = getattr(worker, "next_due", None)
        clock = getattr(worker, "clock", time.time)
        if next_due is None:
            return self.scan_interval
        try:
            due = await next_due()
        except StoreUnavailable:
            logger.exception("worker.next_due_failed")
            # The store went away after the round: the next round meets the outage too and
            # waits for the store's return (_store_back), rather than a whole scan interval.
            return min(_STORE_POLL, self.scan_interval)
        except Exception:
            logger.exception("worker.next_due_failed")
            return self.scan_interval
        if due is None:
            return self.scan_interval
        wait = due - clock()
        if wait <= 0:
            # Due already, yet the round just now found nothing to do.
            return min(_DUE_BUT_IDLE_WAIT, self.scan_interval)
        return min(max(wait, _MIN_WAIT), self.scan_interval)

    async def _wait_any(self, wakeup: asyncio.Event, seconds: float) -> None:
        """Until `wakeup` or stop is set, or `seconds` pass."""
        waiters = [
            asyncio.ensure_future(wakeup.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


def _select_one(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


async def run_until_idle(workers: Sequence[Worker], timeout: float = 30) -> int:  # noqa: ASYNC109
    """Run every worker's `run_once` until a full round finds no work; items handled in all.

    For tests, after Mailman's `make_testable_runner`: no sleeping, no waiting for a scan.
    Exceptions propagate. TimeoutError if the queues are not idle after `timeout` seconds.
    """
    total = 0
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            handled = 0
            for worker in workers:
                handled += await worker.run_once()
            total += handled
            if handled == 0:
                return total
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"workers still busy after {timeout}s")
            await asyncio.sleep(0)
