"""Deferring a job's current stage by the one schedule, for the stages that work on whole jobs.

Prepare and upload defer the same way: the next try is due by `Schedule.retry`, or, once the
lifetime is over, the job fails and its sender is told why (the reports worker).
"""

from __future__ import annotations

from gateway import log
from gateway.queue.schedule import Schedule
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.records import Job

logger = log.get_logger(__name__)


async def defer_job(
    db: Database,
    schedule: Schedule,
    job: Job,
    *,
    stage: str,
    error: str,
    expired_text: str,
    loud: bool = False,
) -> None:
    """Try `job`'s stage again when due; fail it with `expired_text: error` once it expired.

    `loud`: the cause needs an operator (a bucket that does not exist), so the deferral is
    logged as an error, not a warning; the mail stays queued meanwhile.
    """
    now = schedule.clock()
    due = schedule.retry(job.attempts + 1, job.created_at)
    if due is None:
        message = f"{expired_text} for {schedule.lifetime_text()}: {error}"
        logger.error("job.expired", stage=stage, error=message)
        await db.run(store.fail_job, job.id, message, now)
        return
    delay = due - now
    attempts = await db.run(store.defer_job, job.id, error, delay, now)
    log_at = logger.error if loud else logger.warning
    log_at("job.deferred", stage=stage, error=error, attempts=attempts, delay=round(delay, 1))
