"""The prepare stage (gateway/outbound/prepare.py): a full disk defers the job, never holds it;
what the SMTP handler extracted is used instead of parsing the spool again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.workers import DocumentWorkers
from gateway.outbound.prepare import PrepareWorker
from gateway.store.jobs import get_job
from gateway.store.records import JobState
from tests import samples
from tests.helpers import Clock, fill, queued_job, queued_jobs, tiny_filesystem


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


async def test_a_batch_where_one_document_fails_prepares_the_others_once(
    make_config: Callable[..., Config],
) -> None:
    """One round claims three jobs together; the one whose document cannot be faxed fails
    alone, the other two are prepared, each once, and a second round finds nothing."""
    config = make_config()
    good = samples.mail(samples.attachment(samples.pdf(2), "scan.pdf"))
    broken = samples.mail(samples.attachment(b"%PDF-1.4 not a pdf at all", "scan.pdf"))
    db, spool, ids = await queued_jobs(config, [good, broken, good])
    workers = DocumentWorkers(config)
    try:
        worker = PrepareWorker(config=config, db=db, spool=spool, documents=workers)
        assert await worker.run_once() == 3
        jobs = [await db.run(get_job, job_id) for job_id in ids]
        assert [j.state for j in jobs if j is not None] == [
            JobState.PREPARED,
            JobState.FAILED,
            JobState.PREPARED,
        ]
        assert all(j is not None and j.pickups == 0 for j in jobs)
        for job in (jobs[0], jobs[2]):
            assert job is not None and job.document_path is not None
            assert job.document_path.exists()
        assert await worker.run_once() == 0
    finally:
        await workers.stop()
        db.close()


async def test_a_surprise_in_one_job_of_a_batch_is_charged_to_that_job_alone(
    make_config: Callable[..., Config],
) -> None:
    """A job whose prepare raises what nothing handles (its spool file is gone): the round
    raises once the others are prepared; that job alone keeps its pickup, is claimed alone
    next time and, after queue.max_pickups of them, is held; the others are never charged."""
    config = make_config({"queue": {"max_pickups": 2}})
    data = DataDir(config.data.dir)
    raw = samples.mail(samples.attachment(samples.pdf(1), "scan.pdf"))
    db, spool, ids = await queued_jobs(config, [raw, raw, raw])
    workers = DocumentWorkers(config)
    try:
        (data.spool / f"{ids[1]}.eml").unlink()
        worker = PrepareWorker(config=config, db=db, spool=spool, documents=workers)
        with pytest.raises(OSError):
            await worker.run_once()
        jobs = [await db.run(get_job, job_id) for job_id in ids]
        assert [(j.state, j.pickups) for j in jobs if j is not None] == [
            (JobState.PREPARED, 0),
            (JobState.RECEIVED, 1),
            (JobState.PREPARED, 0),
        ]
        with pytest.raises(OSError):
            await worker.run_once()  # claimed alone: pickups 2
        assert await worker.run_once() == 0  # held, not prepared
        culprit = await db.run(get_job, ids[1])
        assert culprit is not None and culprit.state is JobState.HELD
    finally:
        await workers.stop()
        db.close()
