"""Each fax's life at the carrier (store/faxes.py) on a real SQLite file: its POST, the
carrier's statuses, its report, and the job state that follows from its faxes."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.carrier.status import Outcome
from gateway.store.faxes import (
    begin_submit,
    claim_faxes,
    defer_fax,
    fail_fax,
    fax_by_carrier_id,
    faxes_awaiting_final,
    faxes_of,
    faxes_to_report,
    mark_reported,
    mark_submitted,
    record_carrier_status,
)
from gateway.store.jobs import jobs_to_clean, mark_document_deleted
from gateway.store.records import FaxState, JobState
from tests.servers.postgres import StoreBackend
from tests.store_rows import NUMBERS, T0, fax, job, make_job, submit, to_uploaded

pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def conn(tmp_path: Path, store_backend: StoreBackend) -> sqlite3.Connection:
    return store_backend.connect(tmp_path)


# -- the submit stage --------------------------------------------------------------------------


def test_claim_faxes_only_of_uploaded_jobs_when_due(conn: sqlite3.Connection) -> None:
    """Faxes wait for their job's upload and for their own next attempt."""
    received = make_job(conn, now=T0)
    uploaded = make_job(conn, now=T0 + 1)
    to_uploaded(conn, uploaded)
    first, second, third = faxes_of(conn, uploaded)
    assert defer_fax(conn, third.id, "carrier 503", delay=100, now=T0 + 5)
    claimed = claim_faxes(conn, now=T0 + 10, limit=10, max_pickups=3)
    assert [(f.id, j.id) for f, j in claimed] == [(first.id, uploaded), (second.id, uploaded)]
    assert all(f.pickups == 1 for f, _ in claimed)
    assert all(j.document_url == f"https://s3.example/{uploaded}.pdf" for _, j in claimed)
    assert not any(j.id == received for _, j in claim_faxes(conn, now=T0 + 200))


def test_claim_faxes_holds_a_crashing_fax_and_its_job(conn: sqlite3.Connection) -> None:
    """A fax whose submit crashed max_pickups times is held, with its job and siblings."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first = faxes_of(conn, job_id)[0]
    for n in range(3):
        claimed = claim_faxes(conn, now=T0 + 10 + n, limit=1, max_pickups=3)
        assert [f.id for f, _ in claimed] == [first.id]
    with capture_logs() as logs:
        assert claim_faxes(conn, now=T0 + 20, limit=10, max_pickups=3) == []
        assert claim_faxes(conn, now=T0 + 21, limit=10, max_pickups=3) == []
    assert fax(conn, first.id).state is FaxState.HELD
    held = job(conn, job_id)
    assert held.state is JobState.HELD
    assert held.error is not None
    assert held.error.startswith("crashed 3 times while submitting the fax to +12015550101")
    assert [e["event"] for e in logs] == ["fax.held"]


def test_begin_submit_counts_posts_and_keeps_the_first_start(conn: sqlite3.Connection) -> None:
    """Each POST attempt is counted before it starts; the round's start time stays."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first = faxes_of(conn, job_id)[0]
    assert begin_submit(conn, first.id, now=T0 + 10) == 1
    assert defer_fax(conn, first.id, "timeout", delay=30, now=T0 + 11)
    assert begin_submit(conn, first.id, now=T0 + 41) == 2
    counted = fax(conn, first.id)
    assert (counted.submit_attempts, counted.submit_started_at) == (2, T0 + 10)
    assert counted.error_description == "timeout"
    assert mark_submitted(conn, first.id, "carrier-1", "queued", now=T0 + 42)
    assert begin_submit(conn, first.id, now=T0 + 43) is None


def test_job_is_submitted_when_no_fax_waits_for_its_post(conn: sqlite3.Connection) -> None:
    """The job moves to submitted after its last pending fax; a repeat mark is refused."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first, second, third = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    submit(conn, second.id, "carrier-2")
    assert job(conn, job_id).state is JobState.UPLOADED
    assert fail_fax(conn, third.id, 422, "number is not a fax line", now=T0 + 4)
    assert job(conn, job_id).state is JobState.SUBMITTED
    assert not mark_submitted(conn, first.id, "carrier-1", "queued", now=T0 + 5)
    submitted = fax(conn, first.id)
    assert (submitted.state, submitted.carrier_id) == (FaxState.SUBMITTED, "carrier-1")
    assert (submitted.submitted_at, submitted.error_description) == (T0 + 3, None)
    assert fax_by_carrier_id(conn, "carrier-2") == fax(conn, second.id)
    assert fax_by_carrier_id(conn, "nope") is None
    assert not fail_fax(conn, third.id, 1, "again", now=T0 + 6)
    assert fax(conn, third.id).error_description == "number is not a fax line"


# -- the carrier's statuses ----------------------------------------------------------------------


def test_record_carrier_status_final_once_and_job_done(conn: sqlite3.Connection) -> None:
    """Pending statuses update details; the first final one moves the fax; then the job is done."""
    job_id = make_job(conn, recipients=NUMBERS[:2])
    to_uploaded(conn, job_id)
    first, second = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    submit(conn, second.id, "carrier-2")
    assert record_carrier_status(conn, "unknown", "delivered", Outcome.SUCCEEDED) is None

    result = record_carrier_status(
        conn, "carrier-1", "delivering", Outcome.PENDING, None, None, 2, None, None, T0 + 5
    )
    assert result is not None
    assert (result[0].state, result[0].carrier_status, result[0].carrier_attempts) == (
        FaxState.SUBMITTED, "delivering", 2,
    )  # fmt: skip
    assert result[1] is False

    result = record_carrier_status(
        conn, "carrier-1", "delivered", Outcome.SUCCEEDED, 3, 95, 2, None, None, T0 + 6
    )
    assert result is not None and result[1] is True
    assert (result[0].state, result[0].pages, result[0].duration) == (FaxState.DELIVERED, 3, 95)
    assert result[0].finished_at == T0 + 6
    assert job(conn, job_id).state is JobState.SUBMITTED

    result = record_carrier_status(
        conn, "carrier-2", "failed", Outcome.FAILED, 0, 0, 3, 5109, "busy", T0 + 7
    )
    assert result is not None and result[1] is True
    assert (result[0].state, result[0].error_code) == (FaxState.FAILED, 5109)
    assert job(conn, job_id).state is JobState.DONE


def test_out_of_order_statuses_never_undo_a_final_state(conn: sqlite3.Connection) -> None:
    """Whatever order statuses arrive in, a fax becomes final exactly once and stays so."""
    statuses = [
        ("queued", Outcome.PENDING),
        ("delivering", Outcome.PENDING),
        ("delivered", Outcome.SUCCEEDED),
        ("delivering", Outcome.PENDING),
        ("failed", Outcome.FAILED),
    ]
    for n, order in enumerate(itertools.permutations(statuses)):
        job_id = make_job(conn, recipients=NUMBERS[:1])
        to_uploaded(conn, job_id)
        (only,) = faxes_of(conn, job_id)
        submit(conn, only.id, f"carrier-{n}")
        moved = []
        first_final = None
        for status, outcome in order:
            result = record_carrier_status(conn, f"carrier-{n}", status, outcome, now=T0 + 9)
            assert result is not None
            moved.append(result[1])
            if first_final is None and outcome is not Outcome.PENDING:
                first_final = status
        assert moved.count(True) == 1
        final = fax(conn, only.id)
        assert final.carrier_status == first_final
        expected = FaxState.DELIVERED if first_final == "delivered" else FaxState.FAILED
        assert final.state is expected
        assert job(conn, job_id).state is JobState.DONE


def test_faxes_awaiting_final_are_old_submitted_ones(conn: sqlite3.Connection) -> None:
    """The reconciler gets submitted faxes without an outcome since before the cutoff."""
    job_id = make_job(conn)
    to_uploaded(conn, job_id)
    first, second, third = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1", now=T0 + 10)
    submit(conn, second.id, "carrier-2", now=T0 + 10)
    submit(conn, third.id, "carrier-3", now=T0 + 500)
    record_carrier_status(conn, "carrier-2", "delivered", Outcome.SUCCEEDED, now=T0 + 20)
    assert [f.id for f in faxes_awaiting_final(conn, submitted_before=T0 + 100)] == [first.id]


# -- reports and cleanup -------------------------------------------------------------------------


def test_reports_and_cleanup_wait_for_every_outcome_to_be_told(conn: sqlite3.Connection) -> None:
    """Final faxes await their report; a job is cleaned only when all are reported and old."""
    job_id = make_job(conn, recipients=NUMBERS[:2])
    to_uploaded(conn, job_id)
    first, second = faxes_of(conn, job_id)
    submit(conn, first.id, "carrier-1")
    assert fail_fax(conn, second.id, 422, "refused", now=T0 + 4)
    assert [(f.id, j.id) for f, j in faxes_to_report(conn)] == [(second.id, job_id)]
    assert mark_reported(conn, second.id, now=T0 + 5)
    assert not mark_reported(conn, second.id, now=T0 + 6)
    assert not mark_reported(conn, first.id, now=T0 + 6)  # not final yet
    assert jobs_to_clean(conn, older_than=T0 + 1000) == []

    record_carrier_status(conn, "carrier-1", "delivered", Outcome.SUCCEEDED, now=T0 + 100)
    assert [f.id for f, _ in faxes_to_report(conn)] == [first.id]
    assert jobs_to_clean(conn, older_than=T0 + 1000) == []  # outcome not told yet
    mark_reported(conn, first.id, now=T0 + 101)
    assert jobs_to_clean(conn, older_than=T0 + 99) == []  # retention not over
    assert [j.id for j in jobs_to_clean(conn, older_than=T0 + 100)] == [job_id]
    mark_document_deleted(conn, job_id, now=T0 + 200)
    assert job(conn, job_id).stored_deleted_at == T0 + 200
    assert jobs_to_clean(conn, older_than=T0 + 1000) == []
