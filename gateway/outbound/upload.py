"""prepared -> uploaded: put the document where the carrier can fetch it, under a signed URL."""

from __future__ import annotations

import asyncio

from gateway import log
from gateway.config import Config
from gateway.queue.schedule import CLAIM_BATCH, Schedule
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.jobs import Job, JobState

logger = log.get_logger(__name__)


class UploadWorker:
    name = "upload"

    def __init__(
        self, config: Config, db: Database, storage: Storage, schedule: Schedule | None = None
    ) -> None:
        self.config = config
        self.db = db
        self.storage = storage
        self.schedule = schedule or Schedule(config.queue)

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
        if self.schedule.expired(job.created_at):
            message = (
                f"the document could not be stored for {self.schedule.lifetime_text()}: {error}"
            )
            logger.error("job.failed", stage="upload", error=message)
            await self.db.run(store.fail_job, job.id, message, self.schedule.clock())
            return
        # A permanent storage error (no such bucket, access denied) is the operator's to fix;
        # the mail stays queued meanwhile rather than being refused or lost.
        delay = self.schedule.delay(job.attempts + 1)
        attempts = await self.db.run(
            store.defer_job, job.id, f"storage: {error}", delay, self.schedule.clock()
        )
        log_at = logger.warning if transient else logger.error
        log_at("job.deferred", stage="upload", error=error, attempts=attempts, delay=round(delay))
