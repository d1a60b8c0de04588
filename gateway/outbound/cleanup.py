"""A job's documents go as soon as nobody needs them, in two steps of one worker.

1. The stored copy (the S3 object or local storage file the carrier fetches) goes as soon as
   the carrier needs it no more: every fax of the job is final (`document_released` in
   gateway/store/jobs.py, the one rule every deletion obeys), plus storage.retention_seconds.
2. The local files (the spooled message, the assembled document a report attaches) go once
   every outcome is reported too: nothing is deleted before its outcome is told.

Rows and everything else old are the daily purge's (gateway/ops/retention.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from gateway import log
from gateway.config import Config
from gateway.queue.foreground import give_way
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import Clock
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.blobs import SharedFiles
from gateway.store.records import Job
from gateway.store.spool import Spool, SpoolError

logger = log.get_logger(__name__)


class CleanupWorker(QueueWorker):
    name = "cleanup"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        storage: Storage,
        spool: Spool,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.storage = storage
        self.spool = spool

    async def run_once(self) -> int:
        return await self._delete_stored_copies() + await self._remove_files()

    async def _delete_stored_copies(self) -> int:
        now = self.schedule.clock()
        older_than = now - self.config.storage.retention_seconds
        released = await self.db.run(store.stored_copies_to_delete, older_than, 50, due_by=now)
        deleted = 0
        async for job in self._still_listed(released):
            assert job.storage_key is not None  # selected for it
            with log.bound(job_id=job.id):
                try:
                    await self.storage.delete(job.storage_key)
                except StorageError as exc:
                    await self._defer(job, f"storage: {exc}")
                    continue
                await self.db.run(store.mark_stored_copy_deleted, job.id, self.schedule.clock())
                logger.info("job.stored_copy_deleted")
                deleted += 1
        return deleted

    async def _remove_files(self) -> int:
        older_than = self.schedule.clock() - self.config.storage.retention_seconds
        done = await self.db.run(store.jobs_to_clean, older_than, 50, due_by=self.schedule.clock())
        cleaned = 0
        async for job in self._still_listed(done):
            with log.bound(job_id=job.id):
                if job.storage_key and job.stored_deleted_at is None:
                    try:
                        await self.storage.delete(job.storage_key)
                    except StorageError as exc:
                        # Tried again by the schedule, as every queue is: nothing depends on
                        # it being gone now, and an outage must not be hammered.
                        await self._defer(job, f"storage: {exc}")
                        continue
                # This node's copies; other nodes' go by their own sweep once the store's
                # shared copies are gone (mark_document_deleted, gateway/store/blobs.py).
                files = SharedFiles.of(self.config, self.db)
                if job.document_path is not None:
                    document = await asyncio.to_thread(files.local, job.document_path)
                    await asyncio.to_thread(document.unlink, missing_ok=True)
                try:
                    spooled = await asyncio.to_thread(files.local, job.spool_path)
                    await asyncio.to_thread(self.spool.remove, spooled)
                except SpoolError as exc:
                    # A row whose message is not in our spool (a moved data.dir, a tampered
                    # row): that file is not ours to delete; the job stays for an operator.
                    logger.warning("job.cleanup_failed", error=str(exc))
                    continue
                await self.db.run(store.mark_document_deleted, job.id, self.schedule.clock())
                logger.info("job.cleaned")
                cleaned += 1
        return cleaned

    async def _still_listed(self, jobs: list[Job]) -> AsyncIterator[Job]:
        """The listed `jobs`, each after giving way to the stages on the way to the carrier
        (bounded), and only if its row is still as the round listed it: a job changed while
        the round gave way (an operator's retry) may no longer be released; the next round's
        listing decides."""
        for job in jobs:
            await give_way()
            current = await self.db.run(store.get_job, job.id)
            if current is not None and current.updated_at == job.updated_at:
                yield job

    async def _defer(self, job: Job, error: str) -> None:
        # No expiry: a document still stored is worth deleting however late.
        now = self.schedule.clock()
        delay = self.schedule.delay(job.attempts + 1)
        attempts = await self.db.run(store.defer_cleanup, job.id, error, now + delay, now)
        logger.warning(
            "job.cleanup_deferred", error=error, attempts=attempts, delay=round(delay, 1)
        )
