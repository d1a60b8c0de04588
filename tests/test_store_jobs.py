"""The job pipeline (store/jobs.py) on a real SQLite file: each transition, its guards, restarts."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.carrier.status import Outcome
from gateway.store.claims import hand_back, round_of_claims, store_lost
from gateway.store.db import _split, connect
from gateway.store.faxes import (
    begin_submit,
    claim_faxes,
    fax_by_carrier_id,
    faxes_of,
    mark_submitted,
    record_carrier_status,
)
from gateway.store.jobs import (
    advance,
    cancel_job,
    claim_jobs,
    defer_job,
    fail_job,
    faxes_sent_since,
    get_job,
    list_jobs,
    queue_depth,
    retry_job,
)
from gateway.store.records import FaxState, JobState, new_job_id
from gateway.store.schema import MIGRATIONS
from tests.servers.postgres import StoreBackend
from tests.store_rows import NUMBERS, T0, fax, job, make_job, submit, to_uploaded

pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def conn(tmp_path: Path, store_backend: StoreBackend) -> sqlite3.Connection:
    return store_backend.connect(tmp_path)


# -- creating ---------------------------------------------------------------------------------


def test_create_job_with_three_recipients(conn: sqlite3.Connection) -> None:
    """One job (received, sender lower-cased) and one pending fax per recipient."""
    job_id = make_job(conn)
    created = job(conn, job_id)
    assert created.state is JobState.RECEIVED
    assert created.sender == "alice@example.com"
    assert created.spool_path == Path(f"/var/lib/fax-gateway/spool/{job_id}.eml")
    assert (created.created_at, created.attempts, created.pickups) == (T0, 0, 0)
    faxes = faxes_of(conn, job_id)
    assert [f.recipient for f in faxes] == list(NUMBERS)
    assert {f.state for f in faxes} == {FaxState.PENDING}
    assert all(f.submit_attempts == 0 and f.carrier_id is None for f in faxes)


def test_advance_records_when_a_job_was_prepared_and_uploaded(conn: sqlite3.Connection) -> None:
    """prepared_at and uploaded_at are the moments advance moved the job into each state (the
    status pages' timeline dates those steps by them); a new job has neither."""
    job_id = make_job(conn)
    assert (job(conn, job_id).prepared_at, job(conn, job_id).uploaded_at) == (None, None)
    to_uploaded(conn, job_id)
    moved = job(conn, job_id)
    assert (moved.prepared_at, moved.uploaded_at) == (T0 + 1, T0 + 2)


def test_create_job_is_one_transaction(conn: sqlite3.Connection) -> None:
    """When a fax row cannot be inserted, the job row is not there either."""
    with pytest.raises(sqlite3.IntegrityError):
        make_job(conn, "JBROKEN", recipients=("+12015550101", None))  # type: ignore[arg-type]
    assert get_job(conn, "JBROKEN") is None
    assert conn.execute("SELECT count(*) FROM faxes").fetchone()[0] == 0


def test_create_job_merges_repeated_numbers_and_needs_one(conn: sqlite3.Connection) -> None:
    """A number given twice is one fax; a job without recipients is refused."""
    job_id = make_job(conn, recipients=("+12015550101", "+12015550101", "+12015550102"))
    assert [f.recipient for f in faxes_of(conn, job_id)] == ["+12015550101", "+12015550102"]
    with pytest.raises(ValueError, match="no recipients"):
        make_job(conn, recipients=())


def test_new_job_ids_are_safe_unique_and_time_sortable() -> None:
    """Ids are short file-name-safe words, all distinct, ordered by creation time."""
    ids = [new_job_id(T0 + i * 0.001) for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"J[0-9A-HJKMNP-TV-Z]{20}", i) for i in ids)
    same_ms = {new_job_id(T0) for _ in range(1000)}
    assert len(same_ms) == 1000


def test_faxes_sent_since_counts_the_senders_recent_uncancelled_faxes(
    conn: sqlite3.Connection,
) -> None:
    """The daily limit counts this sender's faxes since the cutoff, not cancelled ones."""
    make_job(conn, now=T0 - 90_000)  # yesterday: 3 faxes, too old
    make_job(conn, now=T0 + 10)  # 3
    make_job(conn, recipients=NUMBERS[:2], sender="alice@example.com", now=T0 + 20)  # 2
    make_job(conn, sender="bob@example.com", now=T0 + 30)  # someone else
    cancelled = make_job(conn, now=T0 + 40)
    assert cancel_job(conn, cancelled, now=T0 + 41)
    assert faxes_sent_since(conn, "ALICE@example.com", T0) == 5
    assert faxes_sent_since(conn, "bob@example.com", T0) == 3
    assert faxes_sent_since(conn, "carol@example.com", T0) == 0


# -- job stages --------------------------------------------------------------------------------


def test_claim_jobs_returns_due_jobs_and_counts_a_pickup(conn: sqlite3.Connection) -> None:
    """Only due jobs of the asked state are claimed, each with its pickup counted."""
    due = make_job(conn, now=T0)
    later = make_job(conn, now=T0 + 1)
    defer_job(conn, later, "busy", delay=600, now=T0 + 1)
    other = make_job(conn, now=T0 + 2)
    to_uploaded(conn, other)
    claimed = claim_jobs(conn, JobState.RECEIVED, now=T0 + 10, limit=10, max_pickups=3)
    assert [j.id for j in claimed] == [due]
    assert claimed[0].pickups == 1
    assert job(conn, due).pickups == 1
    assert [j.id for j in claim_jobs(conn, JobState.RECEIVED, now=T0 + 601)] == [due, later]


def test_claim_holds_a_job_that_crashed_max_pickups_times(conn: sqlite3.Connection) -> None:
    """Unfinished pickups reaching the limit hold the job, with a reason, logged once."""
    job_id = make_job(conn)
    with capture_logs() as logs:
        for attempt in range(1, 4):
            claimed = claim_jobs(conn, JobState.RECEIVED, now=T0 + attempt, max_pickups=3)
            assert [j.pickups for j in claimed] == [attempt]  # the worker "crashes" each time
        assert claim_jobs(conn, JobState.RECEIVED, now=T0 + 4, max_pickups=3) == []
        assert claim_jobs(conn, JobState.RECEIVED, now=T0 + 5, max_pickups=3) == []
        with pytest.raises(ValueError):
            claim_jobs(conn, JobState.HELD, now=T0 + 6, max_pickups=3)
    held = job(conn, job_id)
    assert held.state is JobState.HELD
    assert held.error == "crashed 3 times while preparing; held for an operator"
    assert [e for e in logs if e["event"] == "job.held"] == [
        {"event": "job.held", "job_id": job_id, "state": "received", "pickups": 3,
         "log_level": "error"},
    ]  # fmt: skip


def test_a_batch_claimed_together_shares_its_pickups_and_only_the_culprit_is_held(
    conn: sqlite3.Connection,
) -> None:
    """claim_jobs(together=True) takes a batch of never-interrupted jobs; after a crash that
    charged the whole batch each is claimed alone, so the job that keeps killing the process
    is held and its batch-mates, once finished alone, never are."""
    ids = [make_job(conn, now=T0 + n) for n in range(3)]
    batch = claim_jobs(conn, JobState.RECEIVED, now=T0 + 10, limit=4, max_pickups=2, together=True)
    assert [j.id for j in batch] == ids and [j.pickups for j in batch] == [1, 1, 1]
    # The process died mid-batch. Now each comes alone, in line; the first is the culprit.
    culprit, *innocent = ids
    [alone] = claim_jobs(
        conn, JobState.RECEIVED, now=T0 + 11, limit=4, max_pickups=2, together=True
    )
    assert (alone.id, alone.pickups) == (culprit, 2)
    # It killed the process again: the next claim holds it (and returns nothing), then the
    # others come, each alone.
    assert (
        claim_jobs(conn, JobState.RECEIVED, now=T0 + 12, limit=4, max_pickups=2, together=True)
        == []
    )
    for job_id in innocent:
        [next_one] = claim_jobs(
            conn, JobState.RECEIVED, now=T0 + 12, limit=4, max_pickups=2, together=True
        )
        assert (next_one.id, next_one.pickups) == (job_id, 2)
        assert advance(conn, job_id, JobState.RECEIVED, JobState.PREPARED, now=T0 + 12)
    assert (
        claim_jobs(conn, JobState.RECEIVED, now=T0 + 13, limit=4, max_pickups=2, together=True)
        == []
    )
    assert job(conn, culprit).state is JobState.HELD
    assert {job(conn, j).state for j in innocent} == {JobState.PREPARED}
    # With max_pickups 1 every claim is of one job; a job claimed and not finished comes alone.
    fresh = [make_job(conn, now=T0 + 20 + n) for n in range(2)]
    assert (
        len(claim_jobs(conn, JobState.RECEIVED, now=T0 + 30, limit=4, max_pickups=1, together=True))
        == 1
    )
    assert (
        len(claim_jobs(conn, JobState.RECEIVED, now=T0 + 30, limit=4, max_pickups=5, together=True))
        == 1
    )
    # (the second claim found the first of them interrupted: alone again, the other untouched)
    assert [job(conn, j).pickups for j in fresh] == [2, 0]


def test_advance_is_guarded_and_starts_the_stage_fresh(conn: sqlite3.Connection) -> None:
    """A second advance from the same state fails; the first sets columns and resets counters."""
    job_id = make_job(conn)
    claim_jobs(conn, JobState.RECEIVED, now=T0 + 1)
    defer_job(conn, job_id, "document tool busy", delay=0, now=T0 + 1)
    claim_jobs(conn, JobState.RECEIVED, now=T0 + 2)
    assert advance(
        conn, job_id, JobState.RECEIVED, JobState.PREPARED, now=T0 + 3,
        document_path=Path("/data/doc.pdf"), document_type="application/pdf", pages=4,
    )  # fmt: skip
    assert not advance(conn, job_id, JobState.RECEIVED, JobState.PREPARED, now=T0 + 4)
    prepared = job(conn, job_id)
    assert prepared.state is JobState.PREPARED
    assert prepared.document_path == Path("/data/doc.pdf")
    assert (prepared.document_type, prepared.pages) == ("application/pdf", 4)
    assert (prepared.attempts, prepared.pickups, prepared.error) == (0, 0, None)
    assert prepared.updated_at == T0 + 3
    with pytest.raises(ValueError, match="cannot set"):
        advance(conn, job_id, JobState.PREPARED, JobState.UPLOADED, state="done")


def test_defer_job_counts_attempts_and_waits(conn: sqlite3.Connection) -> None:
    """A deferred job keeps its error, counts the attempt and is not due before its time."""
    job_id = make_job(conn)
    claim_jobs(conn, JobState.RECEIVED, now=T0)
    assert defer_job(conn, job_id, "S3 said 503", delay=30, now=T0) == 1
    assert defer_job(conn, job_id, "S3 said 503 again", delay=60, now=T0 + 30) == 2
    deferred = job(conn, job_id)
    assert (deferred.attempts, deferred.pickups) == (2, 0)
    assert deferred.next_attempt_at == T0 + 90
    assert deferred.error == "S3 said 503 again"
    assert claim_jobs(conn, JobState.RECEIVED, now=T0 + 89) == []
    assert [j.id for j in claim_jobs(conn, JobState.RECEIVED, now=T0 + 90)] == [job_id]
    assert defer_job(conn, "JNOPE", "x", delay=1, now=T0) == 0


def test_fail_job_fails_faxes_not_yet_at_the_carrier(conn: sqlite3.Connection) -> None:
    """Pending faxes fail with the job's error; a submitted one is left to the carrier."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first, second, third = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    failed = fail_job(conn, job_id, "document URL expired and could not be renewed", now=T0 + 9)
    assert [f.id for f in failed] == [second.id, third.id]
    assert all(f.state is FaxState.FAILED for f in failed)
    assert all(
        f.error_description == "document URL expired and could not be renewed" for f in failed
    )
    assert all(f.finished_at == T0 + 9 for f in failed)
    assert fax(conn, first.id).state is FaxState.SUBMITTED
    assert job(conn, job_id).state is JobState.FAILED
    assert fail_job(conn, job_id, "again", now=T0 + 10) == []
    assert job(conn, job_id).error == "document URL expired and could not be renewed"


# -- operators ---------------------------------------------------------------------------------


def test_retry_held_job_goes_back_to_the_stage_it_crashed_in(conn: sqlite3.Connection) -> None:
    """A job held while preparing starts over as received, counters reset."""
    job_id = make_job(conn)
    for n in range(4):
        claim_jobs(conn, JobState.RECEIVED, now=T0 + n, max_pickups=3)
    assert job(conn, job_id).state is JobState.HELD
    assert retry_job(conn, job_id, now=T0 + 10) is JobState.RECEIVED
    retried = job(conn, job_id)
    assert (retried.state, retried.pickups, retried.attempts, retried.error) == (
        JobState.RECEIVED, 0, 0, None,
    )  # fmt: skip
    assert [j.id for j in claim_jobs(conn, JobState.RECEIVED, now=T0 + 11)] == [job_id]
    assert retry_job(conn, job_id, now=T0 + 12) is None  # not held or failed any more


def test_retry_failed_job_resends_failed_faxes_only(conn: sqlite3.Connection) -> None:
    """Failed faxes are pending again (carrier ones with a fresh POST round); delivered stay."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first, second, third = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    submit(conn, second.id, "carrier-2")
    record_carrier_status(conn, "carrier-1", "delivered", Outcome.SUCCEEDED, now=T0 + 5)
    record_carrier_status(
        conn, "carrier-2", "failed", Outcome.FAILED, 0, 0, 3, 5109, "busy", now=T0 + 5
    )
    begin_submit(conn, third.id, now=T0 + 6)  # a POST that may have reached the carrier
    fail_job(conn, job_id, "lifetime exceeded", now=T0 + 7)
    assert job(conn, job_id).state is JobState.FAILED

    assert retry_job(conn, job_id, now=T0 + 8) is JobState.UPLOADED
    delivered, resent, unsure = faxes_of(conn, job_id)
    assert delivered.state is FaxState.DELIVERED
    assert (resent.state, resent.carrier_id, resent.submit_attempts) == (FaxState.PENDING, None, 0)
    assert (resent.error_code, resent.finished_at, resent.reported_at) == (None, None, None)
    assert (unsure.state, unsure.submit_attempts, unsure.submit_started_at) == (
        FaxState.PENDING, 1, T0 + 6,
    )  # fmt: skip
    assert fax_by_carrier_id(conn, "carrier-2") is None
    assert sorted(f.id for f, _ in claim_faxes(conn, now=T0 + 9)) == [resent.id, unsure.id]


def test_retry_needs_a_fresh_upload_when_the_url_is_gone(conn: sqlite3.Connection) -> None:
    """An expired URL sends the job back to prepared; restart_from forces an earlier stage."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id, expires=T0 + 100)
    fail_job(conn, job_id, "carrier account suspended", now=T0 + 50)
    assert retry_job(conn, job_id, now=T0 + 200) is JobState.PREPARED
    again = job(conn, job_id)
    assert (again.document_url, again.url_expires_at) == (None, None)
    assert again.document_path == Path(f"/data/documents/{job_id}.pdf")

    fail_job(conn, job_id, "document vanished", now=T0 + 300)
    assert retry_job(conn, job_id, now=T0 + 301, restart_from=JobState.RECEIVED) is (
        JobState.RECEIVED
    )
    assert job(conn, job_id).document_path is None
    with pytest.raises(ValueError):
        retry_job(conn, job_id, restart_from=JobState.DONE)


def test_cancel_job_stops_unsent_faxes(conn: sqlite3.Connection) -> None:
    """Cancelling stops pending faxes; a submitted one goes on; a POST in flight still counts."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first, second, _third = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    begin_submit(conn, second.id, now=T0 + 4)  # its POST is in flight during the cancel
    assert cancel_job(conn, job_id, now=T0 + 5)
    assert not cancel_job(conn, job_id, now=T0 + 6)
    assert job(conn, job_id).state is JobState.CANCELLED
    assert [f.state for f in faxes_of(conn, job_id)] == [
        FaxState.SUBMITTED, FaxState.CANCELLED, FaxState.CANCELLED,
    ]  # fmt: skip
    assert claim_faxes(conn, now=T0 + 10) == []
    # The POST that was in flight succeeded: the fax is on its way and must be followed.
    assert mark_submitted(conn, second.id, "carrier-2", "queued", now=T0 + 7)
    assert fax(conn, second.id).state is FaxState.SUBMITTED
    assert retry_job(conn, job_id) is None
    assert not cancel_job(conn, "JNOPE")


def test_queue_depth_and_list_jobs(conn: sqlite3.Connection) -> None:
    """Depth counts unfinished jobs per state; the list is newest first and filterable."""
    received = make_job(conn, now=T0)
    uploaded = make_job(conn, now=T0 + 1)
    to_uploaded(conn, uploaded)
    cancelled = make_job(conn, now=T0 + 2)
    cancel_job(conn, cancelled)
    failed = make_job(conn, now=T0 + 3)
    fail_job(conn, failed, "bad document")
    assert queue_depth(conn) == {
        "received": 1, "prepared": 0, "uploaded": 1, "submitted": 0, "held": 0,
    }  # fmt: skip
    assert [j.id for j in list_jobs(conn)] == [failed, cancelled, uploaded, received]
    assert [j.id for j in list_jobs(conn, limit=2)] == [failed, cancelled]
    assert [j.id for j in list_jobs(conn, JobState.UPLOADED)] == [uploaded]


# -- durability --------------------------------------------------------------------------------


def test_everything_is_still_there_after_reopening(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """A restart (closing and reopening the store) finds every job and fax as it was."""
    conn = store_backend.connect(tmp_path)
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first = faxes_of(conn, job_id)[0]
    begin_submit(conn, first.id, now=T0 + 10)  # then "killed" before the POST's answer
    claim_jobs(conn, JobState.RECEIVED, now=T0)
    before = (job(conn, job_id), faxes_of(conn, job_id))
    conn.close()

    conn = store_backend.connect(tmp_path)
    try:
        assert (job(conn, job_id), faxes_of(conn, job_id)) == before
        claimed = claim_faxes(conn, now=T0 + 20)
        resumed = next(f for f, _ in claimed if f.id == first.id)
        assert resumed.submit_attempts == 1  # so the submitter looks before posting again
    finally:
        conn.close()


async def test_concurrent_creates_while_a_reader_lists(
    tmp_path: Path, store_backend: StoreBackend
) -> None:
    """Jobs created from many tasks are all stored; a second reader never sees half a job."""
    writer = await store_backend.database(tmp_path).open()
    reader = await store_backend.database(tmp_path).open()
    done = asyncio.Event()
    seen: list[int] = []

    async def read() -> None:
        while not done.is_set():
            jobs = await reader.run(list_jobs, None, 1000)
            for listed in jobs:
                faxes = await reader.run(faxes_of, listed.id)
                assert len(faxes) == 3, "a job was visible without all its faxes"
            seen.append(len(jobs))

    async def create(n: int) -> None:
        await writer.run(make_job, None, now=T0 + n)

    try:
        reading = asyncio.create_task(read())
        await asyncio.gather(*(create(n) for n in range(60)))
        done.set()
        await reading
        assert seen and seen == sorted(seen)
        assert len(await reader.run(list_jobs, None, 1000)) == 60
        assert await reader.run(faxes_sent_since, "alice@example.com", T0) == 180
    finally:
        writer.close()
        reader.close()


def test_jobs_from_before_the_settings_migration_keep_the_configurations(
    tmp_path: Path,
) -> None:
    """A job stored before jobs had cover/cover_template/resolution/notify reads back with
    None for each after the upgrade: the configuration decides for it, as it did."""
    mine = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN cover_template" in m)
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    for version, script in enumerate(MIGRATIONS[:mine]):
        for statement in _split(script):
            old.execute(statement)
        old.execute(f"PRAGMA user_version={version + 1}")
    old.execute(
        "INSERT INTO jobs (id, state, created_at, updated_at, sender, from_number, spool_path)"
        " VALUES ('J1', 'received', 1, 1, 'alice@example.com', '+12015550100', '/x.eml')"
    )
    old.commit()
    old.close()
    conn = connect(path)
    try:
        job = get_job(conn, "J1")
    finally:
        conn.close()
    assert job is not None
    assert (job.cover, job.cover_template, job.resolution, job.notify) == (None, None, None, None)


def test_a_round_the_store_was_lost_under_hands_back_only_its_unfinished_claims(
    conn: sqlite3.Connection,
) -> None:
    """Claims of a round the store was lost under go back (pickup uncounted, due as before the
    submit lease) unless their step recorded an outcome; a round that kept its store hands
    nothing back."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    before = {f.id: f.next_attempt_at for f in faxes_of(conn, job_id)}
    with round_of_claims() as kept:
        [(first, _)] = claim_faxes(conn, now=T0 + 10, limit=1, lease=300.0)
    assert kept.interrupted() == []
    assert fax(conn, first.id).pickups == 1  # left leased: nothing was lost under it
    with round_of_claims() as lost:
        claimed = claim_faxes(conn, now=T0 + 10, limit=2, lease=300.0)
        store_lost()
    [(done, _), (cut_short, _)] = claimed
    submit(conn, done.id, "carrier-1", now=T0 + 11)
    assert hand_back(conn, lost.interrupted()) == 1
    back = fax(conn, cut_short.id)
    assert back.pickups == 0 and back.next_attempt_at == before[cut_short.id]
    assert fax(conn, done.id).state is FaxState.SUBMITTED
    assert [f.id for f, _ in claim_faxes(conn, now=T0 + 12)] == [cut_short.id]
