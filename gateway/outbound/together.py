"""One round of a stage that works on whole jobs (prepare, upload): up to `limit` jobs at once.

Jobs in `state` are claimed together (claims.claim_together: the jobs of one claim share their
pickups, and a job interrupted before is claimed alone) and worked on at once, each under its
own job_id in the log. The round keeps up to `limit` jobs going: when one ends and new work
came meanwhile (the runner's wake: queue/runner.py `woken`; never outside a runner, where a
round is one claim), the free places are claimed at once instead of after the round's slowest
job, so a job that arrives while a long document is being built does not wait for it; after a
surprise, nothing more is claimed in that round. Each job's outcome is its own; a surprise in
one is raised once the others have ended (the runner logs it, and that job's pickup stays
counted), and any further ones are logged as `crashed`. A cancelled round (the daemon's stop
giving up) cancels the jobs under way: their pickups stay counted, what the crash guard is for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway import log
from gateway.queue.runner import next_wake, woken
from gateway.queue.schedule import Schedule
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.records import Job, JobState

logger = log.get_logger(__name__)


async def work_together(
    db: Database,
    schedule: Schedule,
    state: JobState,
    *,
    limit: int,
    max_pickups: int,
    work: Callable[[Job], Awaitable[None]],
    crashed: str,
) -> int:
    """Work on the jobs in `state`, up to `limit` at once, until none is left under way and
    none came meanwhile; how many were claimed."""
    running: set[asyncio.Future[None]] = set()
    surprises: list[BaseException] = []
    claimed = 0
    look = True  # the round's first claim, then one after each wake
    waker: asyncio.Future[None] | None = None
    try:
        while True:
            if look and len(running) < limit:
                jobs = await db.run(
                    store.claim_jobs,
                    state,
                    schedule.clock(),
                    limit - len(running),
                    max_pickups,
                    together=True,
                )
                claimed += len(jobs)
                running.update(asyncio.create_task(_one(job, work)) for job in jobs)
            if not running:
                break
            # A place free: new work is taken up when it comes, not when a job ends.
            waker = asyncio.ensure_future(next_wake()) if len(running) < limit else None
            done, _ = await asyncio.wait(
                running | {waker} if waker else running, return_when=asyncio.FIRST_COMPLETED
            )
            if waker is not None:
                waker.cancel()
                await asyncio.gather(waker, return_exceptions=True)
                waker = None
            running -= done
            ended = [task for task in done if task is not waker and not task.cancelled()]
            surprises += [e for task in ended if (e := task.exception()) is not None]
            # After a surprise, no more this round: the runner's pause comes before the next.
            look = not surprises and woken()
    except asyncio.CancelledError:
        for task in [*running, *([waker] if waker is not None else [])]:
            task.cancel()
        await asyncio.gather(
            *running, *([waker] if waker is not None else []), return_exceptions=True
        )
        raise
    except BaseException:
        # The store failed to claim (it may be down): the jobs under way end first, as a
        # round's do; their outcomes are their own.
        ends = await asyncio.gather(*running, return_exceptions=True)
        surprises += [end for end in ends if isinstance(end, BaseException)]
        for surprise in surprises:
            logger.error(crashed, error=repr(surprise), exc_info=surprise)
        raise
    for surprise in surprises[1:]:
        logger.error(crashed, error=repr(surprise), exc_info=surprise)
    if surprises:
        raise surprises[0]
    return claimed


async def _one(job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
    with log.bound(job_id=job.id):
        await work(job)
