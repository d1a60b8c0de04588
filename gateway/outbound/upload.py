"""prepared -> uploaded: put the document where the carrier can fetch it, under a signed URL.

A round (outbound/together.py) claims up to UPLOADS_AT_ONCE jobs together
(claims.claim_together: they share their pickups, and a job interrupted before is claimed
alone) and stores their documents at once (an S3 PUT is mostly waiting); each job's outcome is
its own, and the steps to uploaded that end together share one commit (store/commit.py). A
surprise in one job is raised once the others' outcomes are recorded; its pickup stays counted.
"""

from __future__ import annotations

import asyncio
import time

from gateway import log
from gateway.config import Config
from gateway.failpoints import failpoint
from gateway.outbound.defer import defer_job
from gateway.outbound.together import work_together
from gateway.queue.runner import QueueWorker, hand_on
from gateway.queue.schedule import Clock, resource_error
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.blobs import SharedFiles
from gateway.store.commit import GroupCommit
from gateway.store.records import Job, JobState

logger = log.get_logger(__name__)

# Jobs one round claims and uploads at once.
UPLOADS_AT_ONCE = 4


class UploadWorker(QueueWorker):
    name = "upload"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        storage: Storage,
        commits: GroupCommit | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.storage = storage
        self.commits = commits or GroupCommit(db)

    async def next_due(self) -> float | None:
        return await self.db.run(store.next_job_due, JobState.PREPARED)

    async def run_once(self) -> int:
        return await work_together(
            self.db,
            self.schedule,
            JobState.PREPARED,
            limit=UPLOADS_AT_ONCE,
            max_pickups=self.config.queue.max_pickups,
            work=self._upload,
            crashed="job.upload_crashed",
        )

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
        moved = await self.commits.run(
            store.advance_in,
            job.id,
            JobState.PREPARED,
            JobState.UPLOADED,
            now=self.schedule.clock(),
            storage_key=stored.key,
            document_url=stored.url,
            url_expires_at=stored.expires_at,
        )
        if moved:
            hand_on("submit")  # submit's work now, whether or not the round's other jobs are done
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
