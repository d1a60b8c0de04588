"""Group commit (gateway/store/commit.py): one transaction per batch, results only once durable."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway import log
from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.db import StoreError
from gateway.store.events import insert_event
from gateway.store.jobs import faxes_sent_since, insert_job, insert_job_unless_resent
from gateway.store.records import NewJob, new_job_id
from tests.helpers import until


def _job(job_id: str | None = None, message_id: str = "") -> NewJob:
    return NewJob(
        id=job_id or new_job_id(),
        sender="alice@example.com",
        auth_user=None,
        client_address=None,
        subject="Fax",
        message_id=message_id,
        from_number="+12015550100",
        spool_path=Path("/nonexistent"),
        recipients=("+12015550123",),
    )


def _count(path: Path, table: str) -> int:
    """Rows as another connection sees them: what is committed, not what is pending."""
    with sqlite3.connect(path) as other:
        return int(other.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_writes_of_one_moment_share_one_transaction(tmp_path: Path) -> None:
    """Fifty events written at once: one batch, every id returned, all visible to others."""
    db = await Database(tmp_path / "store.db").open()
    try:
        commits = GroupCommit(db)
        ids = await asyncio.gather(
            *(
                commits.run(insert_event, f"fax-{n}", "delivered", "outbound", {}, time.time())
                for n in range(50)
            )
        )
        assert len(set(ids)) == 50 and None not in ids
        assert (commits.batches, commits.writes) == (1, 50)
        assert _count(db.path, "events") == 50
    finally:
        db.close()


_WRITER: contextvars.ContextVar[str | None] = contextvars.ContextVar("writer", default=None)


async def test_a_batch_runs_in_no_writer_s_context(tmp_path: Path) -> None:
    """The writes of a batch see none of its writers' context (neither the first one's bound
    log values nor its variables): the flusher runs in a context of its own."""
    db = await Database(tmp_path / "store.db").open()
    try:
        commits = GroupCommit(db)

        def seen(_conn: sqlite3.Connection) -> tuple[str | None, dict[str, Any]]:
            return _WRITER.get(), dict(structlog.contextvars.get_contextvars())

        async def writer(name: str) -> tuple[str | None, dict[str, Any]]:
            _WRITER.set(name)
            with log.bound(session_id=name):
                return await commits.run(seen)

        answers = await asyncio.gather(writer("first"), writer("second"))
        assert answers == [(None, {}), (None, {})]
        assert commits.batches == 1
    finally:
        db.close()


async def test_one_failing_write_fails_alone(tmp_path: Path) -> None:
    """A duplicate job id raises to its caller; the writes beside it are committed."""
    db = await Database(tmp_path / "store.db").open()
    try:
        commits = GroupCommit(db)
        taken = _job()
        await commits.run(insert_job, taken)
        results = await asyncio.gather(
            commits.run(insert_job, _job()),
            commits.run(insert_job, taken),
            commits.run(insert_job, _job()),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert _count(db.path, "jobs") == 3
    finally:
        db.close()


async def test_a_failed_commit_answers_no_write_as_stored(tmp_path: Path) -> None:
    """When COMMIT itself fails (a deferred foreign key), every write of the batch raises and
    none of their rows is in the store."""
    db = await Database(tmp_path / "store.db").open()
    try:
        await db.run(lambda conn: conn.execute("PRAGMA defer_foreign_keys=ON"))
        commits = GroupCommit(db)

        def orphan_fax(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO faxes (job_id, recipient, state, created_at, updated_at)"
                " VALUES ('no-such-job', '+12015550123', 'pending', 0, 0)"
            )
            # Deferred: checked at COMMIT, after every write of the batch has run.
            conn.execute("PRAGMA defer_foreign_keys=ON")

        results = await asyncio.gather(
            commits.run(insert_job, _job()),
            commits.run(orphan_fax),
            commits.run(insert_event, "fax-1", "delivered", "outbound", {}, 0.0),
            return_exceptions=True,
        )
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
        assert _count(db.path, "jobs") == 0
        assert _count(db.path, "events") == 0
        # The store goes on: the next batch commits.
        await commits.run(insert_job, _job())
        assert _count(db.path, "jobs") == 1
    finally:
        db.close()


async def test_two_copies_of_a_message_in_one_batch_make_one_job(tmp_path: Path) -> None:
    """insert_job_unless_resent sees the copy inserted earlier in the same transaction."""
    db = await Database(tmp_path / "store.db").open()
    try:
        commits = GroupCommit(db)
        first, second = _job(message_id="<m@x>"), _job(message_id="<m@x>")
        since = time.time() - 60
        results = await asyncio.gather(
            commits.run(insert_job_unless_resent, first, since),
            commits.run(insert_job_unless_resent, second, since),
        )
        assert results == [None, first.id]
        assert commits.batches == 1
        assert _count(db.path, "jobs") == 1
    finally:
        db.close()


@pytest.mark.parametrize("excluded", [False, True])
async def test_daily_count_leaves_out_jobs_being_committed(tmp_path: Path, excluded: bool) -> None:
    """faxes_sent_since does not count the jobs named in exclude_jobs (counted from memory)."""
    db = await Database(tmp_path / "store.db").open()
    try:
        job = _job()
        await GroupCommit(db).run(insert_job, job)
        count = await db.run(
            faxes_sent_since, "alice@example.com", 0.0, [job.id] if excluded else []
        )
        assert count == (0 if excluded else 1)
    finally:
        db.close()


async def test_a_read_sees_each_commit_and_waits_for_no_write(
    tmp_path: Path, store_backend: Any
) -> None:
    """Database.read counts a grouped commit as soon as it returned, and answers while a long
    write holds the store's writer thread (SQLite: its own connection and thread; PostgreSQL:
    the pool)."""
    db = await store_backend.database(tmp_path).open()
    try:
        commits = GroupCommit(db)
        since = time.time() - 60
        assert await db.read(faxes_sent_since, "alice@example.com", since) == 0
        await commits.run(insert_job, _job())
        assert await db.read(faxes_sent_since, "alice@example.com", since) == 1
        released = threading.Event()

        def hold(conn: Any) -> None:
            released.wait(10)  # a commit's fsync, a worker's claim: the writer is busy

        holding = asyncio.ensure_future(db.run(hold))
        try:
            count = await asyncio.wait_for(db.read(faxes_sent_since, "alice@example.com", since), 5)
            assert count == 1 and not holding.done()
        finally:
            released.set()
            await holding
    finally:
        await asyncio.to_thread(db.close)


def _open_files(path: Path) -> list[str]:
    """This process's open descriptors of the store file (and its -wal and -shm)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(path)):
                found.append(target)
    return found


async def test_a_read_queued_during_close_runs_and_leaves_no_connection_open(
    tmp_path: Path,
) -> None:
    """Reads queued before close still answer (the one that finds the reader gone opens it
    again), close then closes every connection they used, and a read after close is refused."""
    db = await Database(tmp_path / "store.db").open()
    since = time.time() - 60
    assert await db.read(faxes_sent_since, "alice@example.com", since) == 0
    reading, released = threading.Event(), threading.Event()

    def hold(conn: Any) -> int:
        reading.set()
        released.wait(10)
        return 0

    held = asyncio.ensure_future(db.read(hold))
    assert await asyncio.to_thread(reading.wait, 10)
    queued = [asyncio.ensure_future(db.read(faxes_sent_since, "alice@example.com", since))]
    await asyncio.sleep(0)  # the queued read is on the reader's thread's queue now
    # The held read ends only once close is under way (it waits for the queued reads), which
    # a read refused at once tells; the reads tried until then queue as the first did.
    closing = asyncio.ensure_future(asyncio.to_thread(db.close))

    async def close_started() -> bool:
        probe = asyncio.ensure_future(db.read(faxes_sent_since, "alice@example.com", since))
        await asyncio.sleep(0)  # its first step: refused there, or queued
        if probe.done():
            with pytest.raises(StoreError, match="not open"):
                probe.result()
            return True
        queued.append(probe)
        return False

    await until(close_started, 30)
    released.set()
    await closing
    assert await held == 0 and [await read for read in queued] == [0] * len(queued)
    assert _open_files(db.path) == []
    with pytest.raises(StoreError, match="not open"):
        await db.read(faxes_sent_since, "alice@example.com", since)


async def test_the_reader_never_writes(tmp_path: Path) -> None:
    """A write given to the SQLite store's reader fails there and changes nothing."""
    db = await Database(tmp_path / "store.db").open()
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.read(insert_job, _job())
        assert _count(db.path, "jobs") == 0
    finally:
        db.close()
