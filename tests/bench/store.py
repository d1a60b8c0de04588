"""The store: job writes a second with the gateway's durability against plain SQLite writes.

Gateway: `create_job` (a job and its fax in one BEGIN IMMEDIATE transaction), then
`claim_jobs` + `advance` received -> prepared (what each stage does), on the store's own
connection: WAL, synchronous=FULL, so every commit is on disk before it returns. Baselines:
plain INSERTs of the same rows into same-shaped tables, and plain UPDATEs, each statement its
own autocommit, WAL with synchronous=OFF; and the gateway's own functions with
synchronous=OFF, which isolates the fsync from the gateway's Python around it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.store.db import connect
from gateway.store.jobs import advance, claim_jobs, create_job
from gateway.store.records import JobState, NewJob, new_job_id
from tests.bench.common import Result

CLAIM_BATCH = 10  # as the stage workers claim


def new_jobs(count: int, spool: Path) -> list[NewJob]:
    jobs = []
    for _ in range(count):
        job_id = new_job_id()
        jobs.append(
            NewJob(
                id=job_id,
                sender="alice@example.com",
                auth_user=None,
                client_address="127.0.0.1",
                subject="Fax",
                message_id="<bench@example.com>",
                from_number="+12015550100",
                spool_path=spool / f"{job_id}.eml",
                recipients=("+12015550123",),
            )
        )
    return jobs


def gateway_rates(path: Path, jobs: list[NewJob], *, durable: bool = True) -> tuple[float, float]:
    """(jobs created a second, jobs claimed and advanced a second) with the store's code."""
    conn = connect(path)
    try:
        if not durable:
            conn.execute("PRAGMA synchronous=OFF")
        started = time.perf_counter()
        for job in jobs:
            create_job(conn, job)
        created = len(jobs) / (time.perf_counter() - started)
        moved = 0
        started = time.perf_counter()
        while claimed := claim_jobs(conn, JobState.RECEIVED, limit=CLAIM_BATCH):
            for job in claimed:
                moved += advance(conn, job.id, JobState.RECEIVED, JobState.PREPARED)
        advanced = moved / (time.perf_counter() - started)
        if moved != len(jobs):
            raise RuntimeError(f"{moved} of {len(jobs)} jobs advanced")
        return created, advanced
    finally:
        conn.close()


def _plain_tables(conn: sqlite3.Connection) -> None:
    # The columns the gateway's create_job and advance write, nothing else: no constraints
    # beyond the keys, no transaction of our own.
    conn.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT, created_at REAL, updated_at REAL,"
        " sender TEXT, auth_user TEXT, client_address TEXT, subject TEXT, message_id TEXT,"
        " from_number TEXT, spool_path TEXT, document_path TEXT, pickups INTEGER DEFAULT 0)"
    )
    conn.execute(
        "CREATE TABLE faxes (id INTEGER PRIMARY KEY, job_id TEXT, recipient TEXT, state TEXT,"
        " created_at REAL, updated_at REAL)"
    )


def baseline_rates(path: Path, jobs: list[NewJob]) -> tuple[float, float]:
    """(jobs inserted a second, jobs updated twice a second) with plain autocommit statements."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # WAL like the store: in the default rollback-journal mode every autocommit statement
        # would create and delete a journal file, a file-system cost that is not durability.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        _plain_tables(conn)
        started = time.perf_counter()
        for job in jobs:
            now = time.time()
            conn.execute(
                "INSERT INTO jobs (id, state, created_at, updated_at, sender, auth_user,"
                " client_address, subject, message_id, from_number, spool_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    "received",
                    now,
                    now,
                    job.sender,
                    job.auth_user,
                    job.client_address,
                    job.subject,
                    job.message_id,
                    job.from_number,
                    str(job.spool_path),
                ),
            )
            conn.execute(
                "INSERT INTO faxes (job_id, recipient, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (job.id, job.recipients[0], "pending", now, now),
            )
        inserted = len(jobs) / (time.perf_counter() - started)
        # The same two writes per job as a claim and an advance: count a pickup, move it on.
        started = time.perf_counter()
        for job in jobs:
            now = time.time()
            conn.execute(
                "UPDATE jobs SET pickups = pickups + 1, updated_at = ? WHERE id = ?", (now, job.id)
            )
            conn.execute(
                "UPDATE jobs SET state = 'prepared', pickups = 0, updated_at = ? WHERE id = ?",
                (now, job.id),
            )
        updated = len(jobs) / (time.perf_counter() - started)
        return inserted, updated
    finally:
        conn.close()


def title(count: int) -> str:
    return f"Store, {count} jobs: create, then claim + advance one stage"


def run(work: Path, count: int) -> list[Result]:
    """Blocking (SQLite on this thread, as on the store's): called in a thread by the runner."""
    spool = work / "spool"
    created, advanced = gateway_rates(work / "store-full.db", new_jobs(count, spool))
    loose_created, loose_advanced = gateway_rates(
        work / "store-off.db", new_jobs(count, spool), durable=False
    )
    inserted, updated = baseline_rates(work / "plain.db", new_jobs(count, spool))
    return [
        Result(
            what="store create_job (FULL)",
            unit="jobs/s",
            gateway=created,
            baseline=inserted,
            baseline_name="plain INSERTs of the job and fax rows, WAL, synchronous=OFF",
            higher_is_better=True,
            meaning="a durable job costs {ratio}x two plain INSERTs: the fsync'd commit "
            "(the FULL vs OFF rows) times the gateway's transaction and row code",
        ),
        Result(
            what="store claim+advance (FULL)",
            unit="jobs/s",
            gateway=advanced,
            baseline=updated,
            baseline_name="two plain UPDATEs per job, WAL, synchronous=OFF",
            higher_is_better=True,
            meaning="moving a job one stage costs {ratio}x two plain UPDATEs: fsync'd commits, "
            "guarded transitions, whole rows read back as Job objects",
        ),
        Result(
            what="store create_job FULL vs OFF",
            unit="jobs/s",
            gateway=created,
            baseline=loose_created,
            baseline_name="the same create_job with synchronous=OFF",
            higher_is_better=True,
            meaning="the fsync alone: synchronous=FULL makes create_job {ratio}x as costly",
        ),
        Result(
            what="store claim+advance FULL vs OFF",
            unit="jobs/s",
            gateway=advanced,
            baseline=loose_advanced,
            baseline_name="the same claim_jobs + advance with synchronous=OFF",
            higher_is_better=True,
            meaning="the fsync alone: synchronous=FULL makes a stage {ratio}x as costly",
        ),
    ]
