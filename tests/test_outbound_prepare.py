"""The prepare stage (gateway/outbound/prepare.py): a full disk defers the job, never holds it;
what the SMTP handler extracted is used instead of parsing the spool again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.handover import Handover
from gateway.document.mime import extract
from gateway.outbound.prepare import PrepareWorker
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.jobs import create_job, get_job
from gateway.store.records import JobState, NewJob, new_job_id
from gateway.store.spool import Spool
from tests import samples
from tests.helpers import Clock, fill, tiny_filesystem


async def test_a_full_disk_defers_prepare_and_it_resumes_when_space_returns(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """ENOSPC writing the document defers the job (no pickup charged, never held), however
    often; once space returns the job is prepared."""
    config = make_config({"queue": {"max_pickups": 2}})
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    clock = Clock()
    try:
        spool = Spool(data.spool)
        job_id = new_job_id()
        raw = samples.mail(samples.attachment(samples.pdf(6), "scan.pdf"))
        path = spool.write(job_id, raw)
        await db.run(
            create_job,
            NewJob(
                id=job_id,
                sender="alice@example.com",
                auth_user=None,
                client_address=None,
                subject="Fax",
                message_id="",
                from_number="+12015550100",
                spool_path=path,
                recipients=("+12015550123",),
            ),
        )
        worker = PrepareWorker(config=config, db=db, clock=clock, spool=spool)
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
        db.close()


async def test_prepare_uses_what_data_extracted_instead_of_parsing_the_spool_again(
    make_config: Callable[..., Config],
) -> None:
    """A message accepted over SMTP is prepared from the handler's extraction: it works even
    with the spool file emptied, the handover is then empty, and the document has its pages."""
    config = make_config({"smtp": {"listen": "127.0.0.1:0", "hostname": "test.local"}})
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    spool = Spool(data.spool)
    handover = Handover()
    server = SmtpServer(config, db, spool, lambda: None, handover=handover)
    try:
        await server.start()
        raw = samples.mail(samples.attachment(samples.pdf(3), "scan.pdf"))
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False)
        async with client:
            await client.sendmail("alice@example.com", ["12015550123@fax.local"], raw)
        [job_id] = await db.run(lambda c: [r[0] for r in c.execute("SELECT id FROM jobs")])
        assert len(handover) == 1
        job = await db.run(get_job, job_id)
        assert job is not None
        job.spool_path.write_bytes(b"")  # prepare would fail if it parsed this
        worker = PrepareWorker(config=config, db=db, spool=spool, handover=handover)
        assert await worker.run_once() == 1
        job = await db.run(get_job, job_id)
        assert job is not None
        assert (job.state, job.pages) == (JobState.PREPARED, 3)
        assert len(handover) == 0
    finally:
        await server.stop()
        db.close()


def test_handover_holds_at_most_its_bytes_and_gives_each_entry_once() -> None:
    """Past max_bytes the oldest entries go; take() returns an entry once, then None."""
    document = samples.pdf(1)
    extracted = extract(samples.mail(samples.attachment(document, "a.pdf")))
    handover = Handover(max_bytes=3 * len(document) + 200)
    for name in ("a", "b", "c", "d"):
        handover.keep(name, extracted)
    assert handover.take("a") is None
    assert handover.take("d") == extracted
    assert handover.take("d") is None
    assert len(handover) == 2
