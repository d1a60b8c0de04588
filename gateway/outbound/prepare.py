"""received -> prepared: assemble the one document a job faxes from its spooled message."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.assemble import Document, assemble
from gateway.document.cover import CoverContext
from gateway.document.handover import Handover
from gateway.document.kinds import extension
from gateway.document.mime import DocumentError, extract
from gateway.fsutil import write_atomic
from gateway.numbers import pretty
from gateway.outbound.defer import defer_job
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import CLAIM_BATCH, Clock, resource_error
from gateway.store import Database
from gateway.store import faxes as fax_store
from gateway.store import jobs as store
from gateway.store.records import Job, JobState
from gateway.store.spool import Spool

logger = log.get_logger(__name__)


class PrepareWorker(QueueWorker):
    name = "prepare"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        spool: Spool,
        handover: Handover | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.spool = spool
        self.handover = handover

    async def next_due(self) -> float | None:
        return await self.db.run(store.next_job_due, JobState.RECEIVED)

    async def run_once(self) -> int:
        claimed = await self.db.run(
            store.claim_jobs,
            JobState.RECEIVED,
            self.schedule.clock(),
            CLAIM_BATCH,
            self.config.queue.max_pickups,
        )
        for job in claimed:
            with log.bound(job_id=job.id):
                await self._prepare(job)
        return len(claimed)

    async def _prepare(self, job: Job) -> None:
        recipients = [f.recipient for f in await self.db.run(fax_store.faxes_of, job.id)]
        try:
            document = await asyncio.to_thread(self._build, job, recipients)
            name = f"{job.id}{extension(document.content_type)}"
            path = DataDir(self.config.data.dir).documents / name
            await asyncio.to_thread(write_atomic, path, document.data)
        except DocumentError as exc:
            # The SMTP handler validated this message before answering 250, so this is rare
            # (a changed limit or template since); the sender is told through the report.
            logger.warning("job.failed", stage="prepare", reason=exc.kind, error=str(exc))
            await self.db.run(store.fail_job, job.id, str(exc), self.schedule.clock())
            return
        except (OSError, MemoryError) as exc:
            # A full disk, no file descriptors or memory: the machine's trouble, not the job's.
            # Deferred without charging a pickup; anything else is a crash the guard counts.
            if not resource_error(exc):
                raise
            await defer_job(
                self.db,
                self.schedule,
                job,
                stage="prepare",
                error=f"prepare: {type(exc).__name__}: {exc}",
                expired_text="the document could not be prepared",
            )
            return
        moved = await self.db.run(
            store.advance,
            job.id,
            JobState.RECEIVED,
            JobState.PREPARED,
            now=self.schedule.clock(),
            document_path=path,
            document_type=document.content_type,
            pages=document.pages,
        )
        if moved:
            logger.info("job.prepared", pages=document.pages, content_type=document.content_type)

    def _build(self, job: Job, recipients: list[str]) -> Document:
        # The SMTP handler's extraction when this process accepted the message; the same
        # function on the spooled bytes otherwise (a restart, an evicted entry).
        taken = self.handover.take(job.id) if self.handover is not None else None
        extracted = taken if taken is not None else extract(self.spool.read(job.spool_path))
        context = CoverContext(
            sender=job.sender,
            recipient=", ".join(pretty(number) for number in recipients),
            subject=extracted.subject,
            body=extracted.body_text,
            pages=0,
            date=datetime.fromtimestamp(job.created_at, UTC),
        )
        return assemble(
            extracted,
            paper=self.config.fax.paper,
            max_pages=self.config.fax.max_pages,
            cover=self.config.cover,
            cover_context=context,
            templates_dir=self.config.templates.dir,
        )
