"""Jobs and faxes put into a real store for the tests of store/jobs.py and store/faxes.py.

`store_conn` opens a new store file for a test module's `conn` fixture; `make_job` creates a
job with three recipients by default, `to_uploaded` takes it through prepare and upload (so its
faxes can be claimed), `submit` records one fax as at the carrier. Times are given explicitly,
from T0, so the tests control the clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gateway.store.db import connect
from gateway.store.faxes import begin_submit, get_fax, mark_submitted
from gateway.store.jobs import advance, create_job, get_job
from gateway.store.records import Fax, Job, JobState, NewJob, new_job_id

T0 = 1_700_000_000.0
NUMBERS = ("+12015550101", "+12015550102", "+12015550103")


def store_conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a new store file under `tmp_path`, for a fixture: closed afterwards."""
    connection = connect(tmp_path / "store.db")
    yield connection
    connection.close()


def make_job(
    conn: sqlite3.Connection,
    job_id: str | None = None,
    *,
    recipients: tuple[str, ...] = NUMBERS,
    sender: str = "Alice@Example.COM",
    now: float = T0,
) -> str:
    job_id = job_id or new_job_id(now)
    create_job(
        conn,
        NewJob(
            id=job_id,
            sender=sender,
            auth_user="alice",
            client_address="192.0.2.7",
            subject="Contract",
            message_id="<m1@example.com>",
            from_number="+12015550100",
            spool_path=Path(f"/var/lib/fax-gateway/spool/{job_id}.eml"),
            recipients=recipients,
        ),
        now=now,
    )
    return job_id


def job(conn: sqlite3.Connection, job_id: str) -> Job:
    found = get_job(conn, job_id)
    assert found is not None
    return found


def fax(conn: sqlite3.Connection, fax_id: int) -> Fax:
    found = get_fax(conn, fax_id)
    assert found is not None
    return found


def to_uploaded(conn: sqlite3.Connection, job_id: str, *, expires: float = T0 + 86400) -> None:
    assert advance(
        conn, job_id, JobState.RECEIVED, JobState.PREPARED, now=T0 + 1,
        document_path=Path(f"/data/documents/{job_id}.pdf"), document_type="application/pdf",
        pages=2,
    )  # fmt: skip
    assert advance(
        conn, job_id, JobState.PREPARED, JobState.UPLOADED, now=T0 + 2,
        storage_key=f"faxes/{job_id}.pdf", document_url=f"https://s3.example/{job_id}.pdf",
        url_expires_at=expires,
    )  # fmt: skip


def submit(conn: sqlite3.Connection, fax_id: int, carrier_id: str, now: float = T0 + 3) -> None:
    assert begin_submit(conn, fax_id, now=now) is not None
    assert mark_submitted(conn, fax_id, carrier_id, "queued", now=now)
