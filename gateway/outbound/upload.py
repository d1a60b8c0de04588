"""prepared -> uploaded: put the document where the carrier can fetch it, under a signed URL."""

from __future__ import annotations

import asyncio
import time

from gateway import log
from gateway.config import Config
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import CLAIM_BATCH, Clock
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.records import Job, JobState

logger = log.get_logger(__name__)


class UploadWorker(QueueWorker):
    name = "upload"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        storage: Storage,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.storage = storage

    async def next_due(self) -> float | None:
        return await self.db.run(store.next_job_due, JobState.PREPARED)

    async def run_once(self) -> int:
        claimed = await self.db.run(
            store.claim_jobs,
            JobState.PREPARED,
            self.schedule.clock(),
            CLAIM_BATCH,
            self.config.queue.max_pickups,
        )
        for job in claimed:
            with log.bound(job_id=job.id):
                await self._upload(job)
        return len(claimed)

    async def _upload(self, job: Job) -> None:
        assert job.document_path is not None and job.document_type is not None
        data = await asyncio.to_thread(job.document_path.read_bytes)
        try:
            stored = await self.storage.put(job.id, data, job.document_type)
        except StorageError as exc:
            await self._defer(job, str(exc), transient=exc.transient)
            return
        moved = await self.db.run(
            store.advance,
            job.id,
            JobState.PREPARED,
            JobState.UPLOADED,
            now=self.schedule.clock(),
            storage_key=stored.key,
            document_url=stored.url,
            url_expires_at=stored.expires_at,
        )
        if moved:
            logger.info("job.uploaded", key=stored.key, expires_at=stored.expires_at)

    async def _defer(self, job: Job, error: str, *, transient: bool) -> None:
        schedule = self.schedule
        now = schedule.clock()
        due = schedule.retry(job.attempts + 1, job.created_at)
        if due is None:
            # Expired: the fax fails, and the sender is told why.
            message = f"the document could not be stored for {schedule.lifetime_text()}: {error}"
            logger.error("job.expired", stage="upload", error=message)
            await self.db.run(store.fail_job, job.id, message, now)
            return
        # A permanent storage error (no such bucket, access denied) is the operator's to fix;
        # the mail stays queued meanwhile rather than being refused or lost.
        delay = due - now
        attempts = await self.db.run(store.defer_job, job.id, f"storage: {error}", delay, now)
        log_at = logger.warning if transient else logger.error
        log_at("job.deferred", stage="upload", error=error, attempts=attempts, delay=round(delay))
