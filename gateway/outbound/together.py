"""One round of a stage that works on whole jobs (prepare, upload): a batch claimed together.

Up to `limit` jobs in `state` are claimed in one claim (claims.claim_together: they share their
pickups, and a job interrupted before is claimed alone) and worked on at once, each under its
own job_id in the log. Each job's outcome is its own; a surprise in one is raised once the
others have ended (the runner logs it, and that job's pickup stays counted), and any further
ones are logged as `crashed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway import log
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
    """Claim a batch of jobs in `state` and `work` on each at once; how many were claimed."""
    claimed = await db.run(
        store.claim_jobs, state, schedule.clock(), limit, max_pickups, together=True
    )
    ends = await asyncio.gather(*(_one(job, work) for job in claimed), return_exceptions=True)
    surprises = [end for end in ends if isinstance(end, BaseException)]
    for surprise in surprises[1:]:
        logger.error(crashed, error=repr(surprise), exc_info=surprise)
    if surprises:
        raise surprises[0]
    return len(claimed)


async def _one(job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
    with log.bound(job_id=job.id):
        await work(job)
