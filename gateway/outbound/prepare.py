"""received -> prepared: assemble the one document a job faxes from its spooled message.

The work itself runs in a document worker process (gateway/document/workers.py), which reads
the spool file and writes data.dir/documents/<job id>.<ext>; this stage only moves the job on
by the outcome. On a store nodes share, the message is read through this node's working copy
(fetched from the store if another node accepted it) and the document is kept in the store with
the step to prepared (gateway/store/blobs.py). Shared rather than made again where it is
missing: its cover page has the moment it was made, and the copy the carrier fetched and the
one a report attaches must be the same document. A document past the worker's memory or time
budget fails the job (its sender is told why); a worker that died otherwise defers it, and
fails it once that happened queue.max_pickups times; a stop gives the claim back uncounted.
None of these is a crash of the daemon, so none is charged to the crash guard.

A round (outbound/together.py) claims up to PREPARES_AT_ONCE jobs together
(claims.claim_together: they share their pickups, and a job interrupted before is claimed
alone) and builds them at once, each in a worker of its own, so the workers' CPU runs beside
the daemon's; each job's outcome is its own, and the jobs' steps to prepared that end together
share one commit (store/commit.py). One job's failure, deferral or surprise leaves the others'
outcomes as they are; a surprise is raised once the others' are recorded, and its job's pickup
stays counted.
"""

from __future__ import annotations

import time

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.mime import DocumentError
from gateway.document.office import ConversionBusy, OfficeConverter
from gateway.document.pool import PREPARES_AT_ONCE, WorkerDied, WorkersStopped
from gateway.document.workers import DocumentWorkers, Prepared
from gateway.numbers import pretty
from gateway.outbound.defer import defer_job
from gateway.outbound.together import work_together
from gateway.queue.runner import QueueWorker, hand_on
from gateway.queue.schedule import Clock, resource_error
from gateway.store import Database, claims
from gateway.store import faxes as fax_store
from gateway.store import jobs as store
from gateway.store.blobs import SharedFiles
from gateway.store.commit import GroupCommit
from gateway.store.jobs import JOBS
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
        documents: DocumentWorkers,
        office: OfficeConverter | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.spool = spool
        self.documents = documents
        self.office = office or OfficeConverter.for_gateway(config)
        self.commits = commits or GroupCommit(db)

    async def next_due(self) -> float | None:
        return await self.db.run(store.next_job_due, JobState.RECEIVED)

    async def run_once(self) -> int:
        return await work_together(
            self.db,
            self.schedule,
            JobState.RECEIVED,
            limit=PREPARES_AT_ONCE,
            max_pickups=self.config.queue.max_pickups,
            work=self._prepare,
            crashed="job.prepare_crashed",
        )

    async def _prepare(self, job: Job) -> None:
        recipients = [f.recipient for f in await self.db.run(fax_store.faxes_of, job.id)]
        try:
            document = await self._build(job, recipients)
        except WorkersStopped:
            # The daemon is stopping: the job is taken up again at the next start, as if this
            # pickup had never happened.
            await self.db.run(claims.give_back, JOBS, job.id)
            return
        except WorkerDied as exc:
            if job.attempts + 1 >= self.config.queue.max_pickups:
                error = f"{exc}, {job.attempts + 1} times on this document"
                logger.error("job.failed", stage="prepare", reason="worker_died", error=error)
                await self.db.run(store.fail_job, job.id, error, self.schedule.clock())
                return
            await defer_job(
                self.db,
                self.schedule,
                job,
                stage="prepare",
                error=f"prepare: {exc}",
                expired_text="the document could not be prepared",
            )
            return
        except DocumentError as exc:
            # The SMTP handler validated this message before answering 250, so this is rare
            # (a changed limit or template since); the sender is told through the report.
            logger.warning("job.failed", stage="prepare", reason=exc.kind, error=str(exc))
            await self.db.run(store.fail_job, job.id, str(exc), self.schedule.clock())
            return
        except (OSError, MemoryError, ConversionBusy) as exc:
            # A full disk, no file descriptors or memory, every LibreOffice slot taken: the
            # machine's trouble, not the job's. Deferred without charging a pickup; anything
            # else is a crash the guard counts.
            if not (isinstance(exc, ConversionBusy) or resource_error(exc)):
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
        shared = await SharedFiles.of(self.config, self.db).share([document.path])
        moved = await self.commits.run(
            store.advance_in,
            job.id,
            JobState.RECEIVED,
            JobState.PREPARED,
            now=self.schedule.clock(),
            files=shared,
            document_path=document.path,
            document_type=document.content_type,
            pages=document.pages,
        )
        if moved:
            hand_on("upload")  # upload's work now, whether or not the round's other jobs are done
            logger.info("job.prepared", pages=document.pages, content_type=document.content_type)

    async def _build(self, job: Job, recipients: list[str]) -> Prepared:
        return await self.documents.prepare(
            job_id=job.id,
            spool=self.spool,
            spool_path=await SharedFiles.of(self.config, self.db).fetch(job.spool_path),
            documents_dir=DataDir(self.config.data.dir).documents,
            sender=job.sender,
            recipient=", ".join(pretty(number) for number in recipients),
            subject=job.subject,
            created_at=job.created_at,
            cover=self.config.cover.for_message(job.cover, job.cover_template),
            office=self.office,
        )
