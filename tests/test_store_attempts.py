"""The journal of attempts (store/attempts.py) on both store backends: every deferral of a
job's stage is kept with its time and reason, bounded per job, purged with the job, and told
one by one on the status pages' timeline (ui/timeline.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.carrier.status import Outcome
from gateway.store.attempts import KEEP_PER_JOB, Attempt, attempts_of
from gateway.store.faxes import (
    begin_submit,
    defer_fax,
    faxes_of,
    mark_reported,
    mark_submitted,
    record_carrier_status,
)
from gateway.store.jobs import advance, defer_job, fail_job
from gateway.store.records import FaxState, JobState
from gateway.store.retention import purge_rows
from gateway.ui.timeline import job_timeline
from tests.servers.postgres import StoreBackend
from tests.store_rows import T0, job, make_job, to_uploaded

pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def conn(tmp_path: Path, store_backend: StoreBackend) -> sqlite3.Connection:
    return store_backend.connect(tmp_path)


def test_each_deferral_of_each_stage_is_journalled_with_its_reason(
    conn: sqlite3.Connection,
) -> None:
    """Two prepare deferrals, one upload deferral and a fax's POST deferral are four rows,
    oldest first, each with its stage, reason, time and (for the POST) fax."""
    job_id = make_job(conn, recipients=("+12015550101",))
    assert defer_job(conn, job_id, "document worker died", 1.0, now=T0 + 1) == 1
    assert defer_job(conn, job_id, "document worker died again", 2.0, now=T0 + 2) == 2
    assert advance(
        conn, job_id, JobState.RECEIVED, JobState.PREPARED, now=T0 + 3,
        document_path=Path(f"/data/documents/{job_id}.pdf"), document_type="application/pdf",
        pages=1,
    )  # fmt: skip
    assert defer_job(conn, job_id, "storage: 503 Slow Down", 1.0, now=T0 + 4) == 1
    assert advance(
        conn, job_id, JobState.PREPARED, JobState.UPLOADED, now=T0 + 5,
        storage_key=f"faxes/{job_id}.pdf", document_url=f"https://s3.example/{job_id}.pdf",
        url_expires_at=T0 + 86400,
    )  # fmt: skip
    [fax] = faxes_of(conn, job_id)
    assert defer_fax(conn, fax.id, "carrier: 500 Internal Server Error", 1.0, now=T0 + 6)
    assert attempts_of(conn, job_id) == [
        Attempt(T0 + 1, "prepare", "document worker died", None),
        Attempt(T0 + 2, "prepare", "document worker died again", None),
        Attempt(T0 + 4, "upload", "storage: 503 Slow Down", None),
        Attempt(T0 + 6, "submit", "carrier: 500 Internal Server Error", fax.id),
    ]


def test_a_deferral_that_changes_nothing_journals_nothing(conn: sqlite3.Connection) -> None:
    """A job that is no longer in the pipeline (failed meanwhile) and a fax no longer pending
    are not deferred, and leave no row in the journal."""
    job_id = make_job(conn, recipients=("+12015550101",))
    fail_job(conn, job_id, "cannot be faxed", now=T0 + 1)
    [fax] = faxes_of(conn, job_id)
    assert defer_job(conn, job_id, "late", 1.0, now=T0 + 2) == 0
    assert not defer_fax(conn, fax.id, "late", 1.0, now=T0 + 2)
    assert attempts_of(conn, job_id) == []


def test_a_job_keeps_only_its_latest_attempts(conn: sqlite3.Connection) -> None:
    """Past KEEP_PER_JOB deferrals the oldest go; another job's journal is untouched."""
    job_id = make_job(conn)
    other = make_job(conn)
    defer_job(conn, other, "other's", 1.0, now=T0)
    for index in range(KEEP_PER_JOB + 3):
        defer_job(conn, job_id, f"try {index}", 1.0, now=T0 + index)
    kept = attempts_of(conn, job_id)
    assert len(kept) == KEEP_PER_JOB
    assert [a.reason for a in kept] == [f"try {i}" for i in range(3, KEEP_PER_JOB + 3)]
    assert [a.reason for a in attempts_of(conn, other)] == ["other's"]


def test_retention_purges_the_journal_with_its_job(conn: sqlite3.Connection) -> None:
    """A finished, reported job past the cutoff goes with its attempts; a job still in the
    queue keeps its own."""
    old = make_job(conn, recipients=("+12015550101",))
    defer_job(conn, old, "document worker died", 1.0, now=T0 + 1)
    for fax in fail_job(conn, old, "cannot be faxed", now=T0 + 2):
        assert mark_reported(conn, fax.id, now=T0 + 3)
    live = make_job(conn, recipients=("+12015550102",))
    defer_job(conn, live, "document worker died", 1.0, now=T0 + 1)
    purged = purge_rows(conn, T0 + 10)
    assert purged.counts["jobs"] == 1
    assert attempts_of(conn, old) == []
    assert len(attempts_of(conn, live)) == 1
    assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 1


def test_the_timeline_shows_every_attempt_with_its_time_stage_and_reason(
    conn: sqlite3.Connection,
) -> None:
    """Each deferred try is an entry of its own (time, stage, reason; a POST names its
    number), and the summary line of the retry no longer stands for them with its last error."""
    job_id = make_job(conn, recipients=("+12015550101", "+12015550102"))
    to_uploaded(conn, job_id)
    first, second = faxes_of(conn, job_id)
    defer_fax(conn, first.id, "carrier: 500", 1.0, now=T0 + 10)
    defer_fax(conn, first.id, "carrier: timed out", 1.0, now=T0 + 20)
    conn.execute("UPDATE faxes SET submit_attempts = 2 WHERE id = ?", (first.id,))
    entries = job_timeline(conn, job(conn, job_id), faxes_of(conn, job_id))
    deferred = [(e.at, e.what, e.detail, e.problem) for e in entries if "deferred" in e.what]
    assert deferred == [
        (T0 + 10, "submit deferred (+1 201-555-0101)", "carrier: 500", True),
        (T0 + 20, "submit deferred (+1 201-555-0101)", "carrier: timed out", True),
    ]
    [retrying] = [e for e in entries if e.what.startswith("retrying")]
    assert retrying.detail == "2 POST(s)"
    assert second.id not in {a.fax_id for a in attempts_of(conn, job_id)}


def test_a_retrying_faxs_last_error_that_no_deferral_journalled_is_shown(
    conn: sqlite3.Connection,
) -> None:
    """A fax whose POST was deferred once, then failed on the line and was resubmitted, shows
    the carrier's failure in its retrying line: the journal's one try does not stand for it."""
    job_id = make_job(conn, recipients=("+12015550101",))
    to_uploaded(conn, job_id)
    [fax] = faxes_of(conn, job_id)
    defer_fax(conn, fax.id, "carrier: 500", 1.0, now=T0 + 10)
    assert begin_submit(conn, fax.id, T0 + 20, "https://s3.example/doc.pdf") == 1
    assert mark_submitted(conn, fax.id, "carrier-1", "queued", T0 + 21)
    busy = "far end is not able to receive"
    result = record_carrier_status(
        conn, "carrier-1", "failed", Outcome.FAILED, error_code=5109, error_description=busy,
        now=T0 + 30, resubmit_attempts=1, resubmit_delay=60,
    )  # fmt: skip
    assert result is not None and result[0].state is FaxState.PENDING
    assert begin_submit(conn, fax.id, T0 + 90, "https://s3.example/doc.pdf?again") == 1
    entries = job_timeline(conn, job(conn, job_id), faxes_of(conn, job_id))
    [retrying] = [e for e in entries if e.what.startswith("retrying")]
    assert retrying.detail == f"1 POST(s); last error: {busy}"
    # Its deferral is still a line of its own.
    assert [e.detail for e in entries if "deferred" in e.what] == ["carrier: 500"]


def test_a_retry_from_before_the_journal_still_shows_its_last_error(
    conn: sqlite3.Connection,
) -> None:
    """A job retried before the journal existed (attempts counted, no rows) keeps the summary
    with its count and last error."""
    job_id = make_job(conn, recipients=("+12015550101",))
    conn.execute(
        "UPDATE jobs SET attempts = 3, error = 'document worker died' WHERE id = ?", (job_id,)
    )
    entries = job_timeline(conn, job(conn, job_id), faxes_of(conn, job_id))
    [retrying] = [e for e in entries if e.what.startswith("retrying")]
    assert retrying.detail == "3 attempt(s); last error: document worker died"
    assert not [e for e in entries if "deferred" in e.what]
