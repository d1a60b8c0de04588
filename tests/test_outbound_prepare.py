"""The prepare stage (gateway/outbound/prepare.py): a full disk defers the job, never holds it;
what the SMTP handler extracted is used instead of parsing the spool again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.workers import DocumentWorkers
from gateway.outbound.prepare import PrepareWorker
from gateway.store.jobs import get_job
from gateway.store.records import JobState
from tests import samples
from tests.helpers import Clock, fill, queued_job, tiny_filesystem


async def test_a_full_disk_defers_prepare_and_it_resumes_when_space_returns(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """ENOSPC writing the document defers the job (no pickup charged, never held), however
    often; once space returns the job is prepared."""
    config = make_config({"queue": {"max_pickups": 2}})
    data = DataDir(config.data.dir)
    raw = samples.mail(samples.attachment(samples.pdf(6), "scan.pdf"))
    db, spool, job_id = await queued_job(config, raw)
    clock = Clock()
    workers = DocumentWorkers(config)
    try:
        worker = PrepareWorker(config=config, db=db, clock=clock, spool=spool, documents=workers)
        with tiny_filesystem(data.documents, "1m") as documents:
            filler = fill(documents)
            for _ in range(4):  # more often than max_pickups: still not held
                assert await worker.run_once() == 1
                job = await db.run(get_job, job_id)
                assert job is not None
                assert (job.state, job.pickups) == (JobState.RECEIVED, 0)
                assert "No space left" in (job.error or "")
                assert job.next_attempt_at > clock()
                clock.advance(config.queue.max_backoff_seconds)
            filler.unlink()
            assert await worker.run_once() == 1
            job = await db.run(get_job, job_id)
            assert job is not None and job.state is JobState.PREPARED
            assert job.document_path is not None and job.document_path.parent == documents
    finally:
        await workers.stop()
        db.close()
