"""The cleanup stage (gateway/outbound/cleanup.py): a failing delete backs off by the schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.outbound.cleanup import CleanupWorker
from gateway.queue.foreground import Foreground, giving_way_to
from gateway.storage import create_storage
from gateway.store import Database
from gateway.store.faxes import fail_fax, faxes_of, mark_reported
from gateway.store.jobs import fail_job, get_job, retry_job
from gateway.store.records import JobState
from gateway.store.spool import Spool
from tests.helpers import Clock
from tests.store_rows import T0, make_job, to_uploaded


async def test_a_delete_the_storage_refuses_is_retried_with_backoff_not_every_round(
    make_config: Callable[..., Config],
) -> None:
    """Storage refusing a delete defers that job's cleanup by the schedule: rounds before its
    due time do not try again; once the storage works the job is cleaned."""
    config = make_config({"storage": {"backend": "local"}})
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    clock = Clock()
    clock.offset = T0 + 1000 - clock()  # the store rows below are dated around T0
    try:
        job_id = await db.run(make_job, recipients=("+12015550123",))
        await db.run(to_uploaded, job_id)
        await db.run(
            lambda conn: conn.execute(
                "UPDATE jobs SET storage_key = ?, spool_path = ? WHERE id = ?",
                (f"{job_id}-{'0' * 32}.pdf", str(data.spool / f"{job_id}.eml"), job_id),
            )
        )  # the key local storage gives a job's document, and a path in our spool
        [fax] = await db.run(faxes_of, job_id)
        await db.run(fail_fax, fax.id, 5109, "busy", T0 + 3)
        await db.run(mark_reported, fax.id, T0 + 4)
        job = await db.run(get_job, job_id)
        assert job is not None and job.storage_key is not None
        # A stored document that cannot be removed: a non-empty directory in its place.
        (data.media / job.storage_key).mkdir(parents=True)
        (data.media / job.storage_key / "in-the-way").write_bytes(b"x")
        worker = CleanupWorker(
            config=config,
            db=db,
            clock=clock,
            storage=create_storage(config, None),
            spool=Spool(data.spool),
        )
        assert await worker.run_once() == 0
        deferred = await db.run(get_job, job_id)
        assert deferred is not None and deferred.stored_deleted_at is None
        assert deferred.attempts == 1 and deferred.next_attempt_at > clock()
        assert "storage" in (deferred.error or "")
        for _ in range(5):  # rounds before it is due: no new try
            assert await worker.run_once() == 0
        assert (await db.run(get_job, job_id)).attempts == 1  # type: ignore[union-attr]
        (data.media / job.storage_key / "in-the-way").unlink()
        (data.media / job.storage_key).rmdir()
        clock.advance(config.queue.max_backoff_seconds)
        assert await worker.run_once() == 2  # two steps: the stored copy, then the files
        cleaned = await db.run(get_job, job_id)
        assert cleaned is not None and cleaned.stored_deleted_at is not None
    finally:
        db.close()


async def test_the_stored_copy_goes_when_the_fax_is_final_the_local_files_once_reported(
    make_config: Callable[..., Config],
) -> None:
    """The carrier's copy (local storage's media file) is deleted as soon as every fax of the
    job is final, before its report; the spool file and the document the report attaches stay
    until the outcome is reported, then go too."""
    config = make_config({"storage": {"backend": "local"}})
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    storage = create_storage(config, None)
    clock = Clock()
    try:
        spool = Spool(data.spool)
        job_id = await db.run(make_job, recipients=("+12015550123", "+12015550124"), now=clock())
        spooled = spool.write(job_id, b"Subject: x\r\n\r\nbody\r\n")
        document = data.documents / f"{job_id}.pdf"
        document.parent.mkdir(parents=True)
        document.write_bytes(b"%PDF-1.4\n")
        stored = await storage.put(job_id, b"%PDF-1.4\n", "application/pdf")
        await db.run(to_uploaded, job_id)
        await db.run(
            lambda conn: conn.execute(
                "UPDATE jobs SET storage_key = ?, spool_path = ?, document_path = ? WHERE id = ?",
                (stored.key, str(spooled), str(document), job_id),
            )
        )
        media_file = data.media / stored.key
        assert media_file.exists()
        worker = CleanupWorker(
            config=config, db=db, clock=clock, storage=storage, spool=Spool(data.spool)
        )
        first, second = await db.run(faxes_of, job_id)
        await db.run(fail_fax, first.id, 5109, "busy", clock())
        assert await worker.run_once() == 0  # one fax still under way: the carrier may fetch
        assert media_file.exists()
        await db.run(fail_fax, second.id, 5109, "busy", clock())
        assert await worker.run_once() == 1
        job = await db.run(get_job, job_id)
        assert job is not None and job.stored_deleted_at is not None
        assert job.files_removed_at is None
        assert not media_file.exists() and spooled.exists() and document.exists()
        assert await worker.run_once() == 0  # reports not queued yet: the files stay
        await db.run(mark_reported, first.id, clock())
        await db.run(mark_reported, second.id, clock())
        assert await worker.run_once() == 1
        job = await db.run(get_job, job_id)
        assert job is not None and job.files_removed_at is not None
        assert not spooled.exists() and not document.exists()
    finally:
        db.close()


async def test_a_job_retried_while_cleanup_gives_way_keeps_its_stored_copy(
    make_config: Callable[..., Config],
) -> None:
    """A failed job the operator retries after cleanup listed it, while cleanup gives way to
    the front stages, is no longer released: its stored copy (the URL the carrier fetches on
    the retry's POST) stays."""
    config = make_config({"storage": {"backend": "local"}})
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    storage = create_storage(config, None)
    clock = Clock()
    try:
        job_id = await db.run(make_job, recipients=("+12015550123",), now=clock())
        stored = await storage.put(job_id, b"%PDF-1.4\n", "application/pdf")
        await db.run(to_uploaded, job_id, expires=clock() + 86400)
        await db.run(
            lambda conn: conn.execute(
                "UPDATE jobs SET storage_key = ? WHERE id = ?", (stored.key, job_id)
            )
        )
        await db.run(fail_job, job_id, "the carrier refused the document", clock())
        assert (await db.run(get_job, job_id)).state is JobState.FAILED  # type: ignore[union-attr]
        worker = CleanupWorker(
            config=config, db=db, clock=clock, storage=storage, spool=Spool(data.spool)
        )
        # A front stage with items: cleanup waits (bounded) before each job it listed.
        front = Foreground(max_wait=0.5)
        front.mark("submit", True)
        giving_way_to(front)

        async def operator_retries() -> None:
            await asyncio.sleep(0.1)
            assert await db.run(retry_job, job_id) is JobState.UPLOADED

        retry = asyncio.create_task(operator_retries())
        await worker.run_once()
        await retry
        job = await db.run(get_job, job_id)
        assert job is not None and job.state is JobState.UPLOADED
        assert job.stored_deleted_at is None
        assert (data.media / stored.key).exists()
    finally:
        db.close()
