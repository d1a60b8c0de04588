"""Shared files (gateway/store/blobs.py): on PostgreSQL in the row's transaction, fetched into a
node's own data.dir on a miss, deleted with the row's last need; on SQLite nothing at all."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.datadir import DataDir
from gateway.ops.workingcopies import sweep
from gateway.store import Database, blobs
from gateway.store import inbound as inbound_store
from gateway.store import jobs as job_store
from gateway.store import outbox as outbox_store
from gateway.store.blobs import SharedFiles, sweep_working_copies
from gateway.store.commit import GroupCommit
from gateway.store.records import JobState, NewJob
from gateway.store.retention import purge_rows
from gateway.store.spool import Spool
from tests.servers.postgres import StoreBackend
from tests.store_rows import T0

pytestmark = pytest.mark.usefixtures("store_backend")

MESSAGE = b"From: alice@example.com\r\nSubject: x\r\n\r\n" + b"m" * 10_000
PDF = b"%PDF-1.4 converted\n"


@pytest.fixture
async def db(tmp_path: Path, store_backend: StoreBackend) -> AsyncIterator[Database]:
    database = await store_backend.database(tmp_path).open()
    yield database
    database.close()


def new_job(spool: Spool, job_id: str) -> NewJob:
    return NewJob(
        id=job_id,
        sender="alice@example.com",
        auth_user=None,
        client_address=None,
        subject="s",
        message_id=f"<{job_id}@example.com>",
        from_number="+12015550100",
        spool_path=spool.path_for(job_id),
        recipients=("+12015550101",),
    )


async def accept(db: Database, spool: Spool, job_id: str) -> None:
    """What the SMTP handler does: spool the message and its PDF, then the row with them."""
    path = spool.write(job_id, MESSAGE)
    converted = spool.write_converted(job_id, 0, PDF)
    files = [(path, MESSAGE), (converted, PDF)]
    await GroupCommit(db).run(
        job_store.insert_job_unless_resent, new_job(spool, job_id), None, files=files
    )


async def test_a_job_commits_its_message_and_pdfs_with_its_row(
    db: Database, tmp_path: Path
) -> None:
    """PostgreSQL holds the message and its converted PDF once the row is committed (message
    last, as it is written back); SQLite keeps none, its files are the truth."""
    spool = Spool(DataDir(tmp_path / "a").spool)
    await accept(db, spool, "job1")
    copies = await db.run(blobs.read, spool.path_for("job1"))
    if db.shared:
        assert copies == [("spool/job1.0.pdf", PDF), ("spool/job1.eml", MESSAGE)]
    else:
        assert copies == []
        assert await db.run(blobs.names) == set()


async def test_a_failed_write_leaves_no_shared_copy(db: Database, tmp_path: Path) -> None:
    """A write whose row fails after its files were put is rolled back whole (no orphan)."""
    spool = Spool(DataDir(tmp_path / "a").spool)
    await accept(db, spool, "job1")

    def put_then_fail(conn: object) -> None:
        blobs.put(conn, [(spool.path_for("job2"), MESSAGE)])  # type: ignore[arg-type]
        job_store.insert_job(conn, new_job(spool, "job1"))  # type: ignore[arg-type]

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await GroupCommit(db).run(put_then_fail)
    assert not await db.run(blobs.held, spool.path_for("job2"))
    assert await db.run(blobs.held, spool.path_for("job1")) == db.shared


async def test_another_node_fetches_the_message_into_its_own_data_dir(
    db: Database, tmp_path: Path
) -> None:
    """Node B, whose data.dir lacks a job node A accepted, gets the message and its PDF in its
    own spool (so the document worker finds both) after A's data.dir is gone."""
    node_a, node_b = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    spool_a = Spool(node_a.spool)
    await accept(db, spool_a, "job1")
    recorded = spool_a.path_for("job1")
    for path in node_a.spool.iterdir():
        path.unlink()
    files = SharedFiles(node_b.root, db)
    fetched = await files.fetch(recorded)
    if db.shared:
        assert fetched == node_b.spool / "job1.eml" and fetched.read_bytes() == MESSAGE
        assert Spool(node_b.spool).read_converted(fetched) == {0: PDF}
        assert not [p for p in node_b.spool.iterdir() if p.name.startswith(".")]
    else:
        assert fetched == recorded and not fetched.exists()


async def test_a_node_reads_its_own_copy_without_the_store(db: Database, tmp_path: Path) -> None:
    """The node that wrote a file reads its own copy (the store is not asked: even a copy
    gone from the store is still read there), and another node never reads the first node's
    data.dir, even on one machine: it makes its own copy."""
    spool = Spool(DataDir(tmp_path / "a").spool)
    await accept(db, spool, "job1")
    recorded = spool.path_for("job1")
    other = await SharedFiles(tmp_path / "b", db).fetch(recorded)
    await db.run(blobs.forget, [recorded])
    assert await SharedFiles(tmp_path / "a", db).fetch(recorded) == recorded
    if db.shared:
        assert other == tmp_path / "b" / "spool" / "job1.eml" and other.read_bytes() == MESSAGE
    else:
        assert other == recorded


async def test_cleanup_forgets_the_message_its_pdfs_and_the_document(
    db: Database, tmp_path: Path
) -> None:
    """mark_document_deleted takes the shared copies of the message family and the document."""
    data = DataDir(tmp_path / "a")
    spool = Spool(data.spool)
    await accept(db, spool, "job1")
    document = data.documents / "job1.pdf"
    await db.run(
        job_store.advance, "job1", JobState.RECEIVED, JobState.PREPARED,
        files=[(document, b"%PDF doc")], document_path=document,
        document_type="application/pdf", pages=1,
    )  # fmt: skip
    assert await db.run(blobs.held, document) == db.shared
    await db.run(job_store.mark_document_deleted, "job1")
    assert await db.run(blobs.names) == set()


async def test_a_guarded_advance_that_does_not_move_keeps_nothing(
    db: Database, tmp_path: Path
) -> None:
    """A second node's prepare that lost the race (the job is no longer received) stores
    nothing: only the transition that happens brings its document."""
    data = DataDir(tmp_path / "a")
    await accept(db, Spool(data.spool), "job1")
    document = data.documents / "job1.pdf"
    moved = await db.run(
        job_store.advance, "job1", JobState.UPLOADED, JobState.SUBMITTED,
        files=[(document, b"%PDF doc")],
    )  # fmt: skip
    assert not moved and not await db.run(blobs.held, document)


async def test_outbox_mail_is_shared_until_sent(db: Database, tmp_path: Path) -> None:
    """A queued mail is in the store with its row and leaves it when the relay took it; a
    second enqueue of the key changes nothing."""
    path = tmp_path / "a" / "outbox" / "k.eml"
    queued = await db.run(
        outbox_store.enqueue, key="k", kind="delivered", recipients=["a@example.com"],
        message_path=path, files=[(path, b"mail")],
    )  # fmt: skip
    again = await db.run(
        outbox_store.enqueue, key="k", kind="delivered", recipients=["a@example.com"],
        message_path=path, files=[(path, b"other")],
    )  # fmt: skip
    assert queued and not again
    assert await db.run(blobs.read, path) == ([("outbox/k.eml", b"mail")] if db.shared else [])
    [message] = await db.run(outbox_store.list_messages)
    await db.run(outbox_store.mark_sent, message.id)
    assert not await db.run(blobs.held, path)


async def test_requeue_of_a_mail_whose_file_is_on_another_node(
    db: Database, tmp_path: Path
) -> None:
    """requeue_key finds a dead mail's message in the store when this node never had it."""
    path = tmp_path / "a" / "outbox" / "k.eml"
    await db.run(
        outbox_store.enqueue, key="k", kind="delivered", recipients=["a@example.com"],
        message_path=path, files=[(path, b"mail")],
    )  # fmt: skip
    [message] = await db.run(outbox_store.list_messages)
    await db.run(outbox_store.mark_dead, message.id, "expired")
    # Node A's disk never had it either here: only the store can say it is there.
    assert await db.run(outbox_store.requeue_key, "k") == db.shared


async def test_inbound_fax_shared_from_stored_to_delivered(db: Database, tmp_path: Path) -> None:
    """The received fax is in the store once stored, keeps its name as a dead letter, and
    leaves the store when its mail went out (file_path cleared)."""
    inbound = DataDir(tmp_path / "a").inbound / "000001-c1.pdf"
    fax_id = await db.run(
        inbound_store.announce_inbound, carrier_id="c1", from_number="+12015550100",
        to_number="+12015550101", pages=1, duration=None, fax_time=None, media_url=None, now=T0,
    )  # fmt: skip
    assert fax_id is not None
    await db.run(
        inbound_store.mark_stored, fax_id, str(inbound), T0 + 1, files=[(inbound, b"%PDF in")]
    )
    dead = DataDir(tmp_path / "a").dead_letter / inbound.name
    assert blobs.name_of(dead) == blobs.name_of(inbound) == "inbound/000001-c1.pdf"
    assert await db.run(blobs.held, dead) == db.shared
    await db.run(inbound_store.set_file_path, fax_id, None, T0 + 2)
    assert await db.run(blobs.names) == set()


async def test_purge_forgets_what_it_purges(db: Database, tmp_path: Path) -> None:
    """The daily purge's rows take their shared copies with them."""
    data = DataDir(tmp_path / "a")
    path = data.outbox / "k.eml"
    await db.run(
        outbox_store.enqueue, key="k", kind="delivered", recipients=["a@example.com"],
        message_path=path, files=[(path, b"mail")], now=T0,
    )  # fmt: skip
    [message] = await db.run(outbox_store.list_messages)
    await db.run(outbox_store.mark_dead, message.id, "expired", T0)
    purged = await db.run(purge_rows, time.time() + 10)
    assert purged.counts["outbox"] == 1
    assert not await db.run(blobs.held, path)


async def test_sweep_removes_only_old_copies_the_store_no_longer_holds(
    db: Database, tmp_path: Path
) -> None:
    """A node's sweep keeps working copies the store still has and young files (a commit
    may be under way), and removes old ones whose shared copy is gone."""
    data = DataDir(tmp_path / "b")
    spool = Spool(data.spool)
    await accept(db, spool, "kept")
    gone = data.outbox / "gone.eml"
    young = data.outbox / "young.eml"
    for path in (gone, young):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old = time.time() - 7200
    for path in [gone, *data.spool.iterdir()]:
        os.utime(path, (old, old))
    shared = await db.run(blobs.names)
    removed = sweep_working_copies(data.root, shared, time.time() - 3600)
    left = sorted(p.name for folder in (data.spool, data.outbox) for p in folder.iterdir())
    if db.shared:
        assert removed == 1 and left == ["kept.0.pdf", "kept.eml", "young.eml"]
    else:
        # (The daemon never sweeps on SQLite; a sweep there would find nothing held.)
        assert removed == 3 and left == ["young.eml"]


async def test_sweep_at_start_of_a_shared_node(
    db: Database, tmp_path: Path, make_config: object
) -> None:
    """gateway.ops.workingcopies.sweep names this node's data.dir from its configuration."""
    config = make_config({"data": {"dir": str(tmp_path / "b")}})  # type: ignore[operator]
    orphan = DataDir(tmp_path / "b").spool / "orphan.eml"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    os.utime(orphan, (T0, T0))
    assert await sweep(config, db, time.time()) == 1
    assert not orphan.exists()
