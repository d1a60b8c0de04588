"""The cleanup stage (gateway/outbound/cleanup.py): a failing delete backs off by the schedule."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.outbound.cleanup import CleanupWorker
from gateway.storage import create_storage
from gateway.store import Database
from gateway.store.faxes import fail_fax, faxes_of, mark_reported
from gateway.store.jobs import get_job
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
