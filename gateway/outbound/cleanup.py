"""Documents go once every fax of their job is final and its outcome told (plus retention)."""

from __future__ import annotations

import asyncio

from gateway import log
from gateway.config import Config
from gateway.queue.schedule import Schedule
from gateway.storage.base import Storage, StorageError
from gateway.store import Database
from gateway.store import jobs as store

logger = log.get_logger(__name__)


class CleanupWorker:
    name = "cleanup"

    def __init__(
        self, config: Config, db: Database, storage: Storage, schedule: Schedule | None = None
    ) -> None:
        self.config = config
        self.db = db
        self.storage = storage
        self.schedule = schedule or Schedule(config.queue)

    async def run_once(self) -> int:
        older_than = self.schedule.clock() - self.config.storage.retention_seconds
        done = await self.db.run(store.jobs_to_clean, older_than, 50)
        cleaned = 0
        for job in done:
            with log.bound(job_id=job.id):
                if job.storage_key:
                    try:
                        await self.storage.delete(job.storage_key)
                    except StorageError as exc:
                        # Left for the next scan; nothing depends on it being gone now.
                        logger.warning("job.cleanup_failed", error=str(exc))
                        continue
                for path in (job.document_path, job.spool_path):
                    if path is not None:
                        await asyncio.to_thread(path.unlink, missing_ok=True)
                await self.db.run(store.mark_document_deleted, job.id, self.schedule.clock())
                logger.info("job.cleaned")
                cleaned += 1
        return cleaned
