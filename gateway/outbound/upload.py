"""prepared -> uploaded: put the document where the carrier can fetch it, under a signed URL."""

from __future__ import annotations

import asyncio
import time

from gateway import log
from gateway.config import Config
from gateway.failpoints import failpoint
from gateway.outbound.defer import defer_job
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import CLAIM_BATCH, Clock, resource_error
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.blobs import SharedFiles
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
        try:
            path = await SharedFiles.of(self.config, self.db).fetch(job.document_path)
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            if not resource_error(exc):
                raise
            await self._defer(job, f"reading the document: {exc}")
            return
        try:
            stored = await self.storage.put(job.id, data, job.document_type)
        except StorageError as exc:
            # A permanent storage error (no such bucket, access denied) is the operator's to
            # fix; the mail stays queued meanwhile rather than being refused or lost.
            await self._defer(job, f"storage: {exc}", loud=not exc.transient)
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
            failpoint("after_upload")

    async def _defer(self, job: Job, error: str, *, loud: bool = False) -> None:
        await defer_job(
            self.db,
            self.schedule,
            job,
            stage="upload",
            error=error,
            expired_text="the document could not be stored",
            loud=loud,
        )
