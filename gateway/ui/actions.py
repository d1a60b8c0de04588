"""The moves an admin makes from the status pages: the same operations as `fax-gateway queue`.

Retry, cancel and requeue call the store functions the queue command calls (retry_job,
cancel_job, requeue_dead_letter) with the same checks first (commands/queue.py RETRYABLE and
restart_stage), inside the store's guarded transactions; then the workers are woken, since
here, unlike the command, we share the daemon's loop. Each returns the sentence the page shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway import log
from gateway.cli import UserError
from gateway.commands.queue import RETRYABLE, restart_stage
from gateway.config import Config
from gateway.inbound.files import requeue_dead_letter
from gateway.store import Database
from gateway.store import jobs as jobs_store
from gateway.store.faxes import faxes_of
from gateway.store.inbound import InboundState, get_inbound
from gateway.store.records import FINAL_JOB_STATES, FaxState, JobState

logger = log.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


class Actions:
    def __init__(self, config: Config, db: Database, wake: Callable[[], None]) -> None:
        self.config = config
        self.db = db
        self.wake = wake

    async def retry(self, job_id: str, user: str) -> Outcome:
        job = await self.db.run(jobs_store.get_job, job_id)
        if job is None:
            return Outcome(False, f"There is no job {job_id}.")
        if job.state not in RETRYABLE:
            return Outcome(False, f"Job {job.id} is {job.state}; only held or failed jobs retry.")
        try:
            restart_from = await self.db.run(restart_stage, job, self.config.data.dir)
        except UserError as exc:
            return Outcome(False, str(exc))
        stage = await self.db.run(jobs_store.retry_job, job.id, restart_from=restart_from)
        if stage is None:
            return Outcome(False, f"Job {job.id} changed meanwhile; look again.")
        logger.info(
            "job.retried",
            job_id=job.id,
            from_state=job.state.value,
            state=stage.value,
            by=f"ui:{user}",
        )
        self.wake()
        if stage is JobState.DONE:
            return Outcome(True, f"Job {job.id}: every fax is final already; nothing to send.")
        faxes = await self.db.run(faxes_of, job.id)
        pending = sum(1 for fax in faxes if fax.state is FaxState.PENDING)
        return Outcome(True, f"Job {job.id} is {stage} again: {pending} fax(es) to send.")

    async def cancel(self, job_id: str, user: str) -> Outcome:
        job = await self.db.run(jobs_store.get_job, job_id)
        if job is None:
            return Outcome(False, f"There is no job {job_id}.")
        if job.state in FINAL_JOB_STATES:
            return Outcome(False, f"Job {job.id} is already {job.state}; nothing to cancel.")
        if not await self.db.run(jobs_store.cancel_job, job.id):
            return Outcome(False, f"Job {job.id} finished meanwhile; nothing to cancel.")
        logger.info("job.cancelled", job_id=job.id, from_state=job.state.value, by=f"ui:{user}")
        faxes = await self.db.run(faxes_of, job.id)
        at_carrier = sum(1 for fax in faxes if fax.state is FaxState.SUBMITTED)
        note = (
            f" {at_carrier} fax(es) already at the carrier cannot be called back."
            if at_carrier
            else ""
        )
        return Outcome(True, f"Job {job.id} is cancelled.{note}")

    async def requeue(self, inbound_id: int, user: str) -> Outcome:
        fax = await self.db.run(get_inbound, inbound_id)
        if fax is None:
            return Outcome(False, f"There is no inbound fax {inbound_id}.")
        if fax.state is not InboundState.DEAD:
            return Outcome(False, f"Inbound fax {fax.id} is {fax.state}, not a dead letter.")
        try:
            state = await self.db.run(requeue_dead_letter, fax.id, data_dir=self.config.data.dir)
        except (LookupError, ValueError, FileNotFoundError) as exc:
            return Outcome(False, str(exc))
        logger.info(
            "inbound.requeued",
            inbound_id=fax.id,
            carrier_id=fax.carrier_id,
            state=state.value,
            by=f"ui:{user}",
        )
        self.wake()
        return Outcome(True, f"Inbound fax {fax.id} is {state} again and goes out.")
