"""The runner every queue worker shares: one loop per worker, woken by commits, with a scan.

A worker is any object with a `name` and `async run_once() -> int` that handles the items of
its queue that are due and returns how many (0 = nothing to do). Its state lives in the store,
so the runner keeps none: each loop calls `run_once` while it finds work, then sleeps until
`wake()` (called after a commit that created work: the SMTP handler queuing a job, a webhook
stored) or the scan interval passes, the fallback that finds deferred items coming due.

A worker that raises is logged with its traceback and called again after a pause that doubles
with each consecutive failure, within bounds: it never dies and never spins. Stopping lets the
current `run_once` finish (each is a safe point: a step is committed or not started) and
cancels only past the timeout. Tests use `run_until_idle` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Protocol

from gateway import log
from gateway.queue.backoff import backoff_delay

logger = log.get_logger(__name__)


class Worker(Protocol):
    name: str

    async def run_once(self) -> int: ...


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
    ) -> None:
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
        self._wakeups = {worker.name: asyncio.Event() for worker in self.workers}
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

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

    def wake(self) -> None:
        """Something was committed that may be work: every worker looks now.

        Cheap and safe to call often: a worker already running finishes its round, sees the
        flag and runs once more, so a wake during a round is never lost.
        """
        for event in self._wakeups.values():
            event.set()

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
            await self._cancel(pending)
            raise
        if pending:
            logger.warning(
                "workers.stop_timeout",
                timeout=timeout,
                workers=sorted(name for name, t in self._tasks.items() if t in pending),
            )
            await self._cancel(pending)
        self._tasks.clear()
        logger.info("workers.stopped")

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, worker: Worker) -> None:
        log.bind(worker=worker.name)
        wakeup = self._wakeups[worker.name]
        failures = 0
        while not self._stopping.is_set():
            # Cleared before the round, so a wake() arriving while it runs triggers another.
            wakeup.clear()
            try:
                # int(): a worker returning something else is a bug to log, not to die of.
                handled = int(await worker.run_once())
            except Exception:
                failures += 1
                pause = backoff_delay(failures, self.error_pause, self.max_error_pause)
                logger.exception("worker.crashed", failures=failures, pause=round(pause, 3))
                # Only stopping shortens the pause: wakes may come far more often than that.
                await self._wait(self._stopping, pause)
                continue
            failures = 0
            if handled > 0:
                # What one stage finished is the next stage's work (a prepared job, a queued
                # report mail): the others look now rather than at their next scan.
                for name, event in self._wakeups.items():
                    if name != worker.name:
                        event.set()
                # More may be due; yield so one busy queue cannot starve the loop.
                await asyncio.sleep(0)
                continue
            await self._wait_any(wakeup, self.scan_interval)

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
