"""Email-to-fax jobs (table `jobs`): the outbound queue's pipeline, one job per message.

Each stage worker owns one job transition and every transition is one transaction, guarded by
the state it starts from (states and rows: store/records.py; each fax's own life at the
carrier: store/faxes.py). The daily-limit counts are here too, and the operators' retry and
cancel, which take the job's faxes not yet at the carrier with it.

Stage contract: prepare sets `document_path` (with document_type, pages) when it advances to
prepared; upload sets `document_url` (with storage_key, url_expires_at). `retry_job` reads
those columns to find the earliest stage a job has not completed.

Crash safety: a claim counts a pickup *before* work starts and finishing the step resets it,
so pickups that reach the limit mean the step crashed the process that many times; the job is
held for a human instead of crash-looping (Mailman's shunt queue).

Functions take an explicit `now` (default: the clock) so tests control time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from gateway.log import get_logger
from gateway.queue.schedule import crash_message
from gateway.store import attempts, blobs
from gateway.store.blobs import File
from gateway.store.claims import QueueTable, claim, claim_together, next_due
from gateway.store.db import transaction
from gateway.store.records import (
    FINAL,
    FINAL_JOB_STATES,
    PIPELINE,
    Fax,
    FaxState,
    Job,
    JobState,
    NewJob,
)

log = get_logger(__name__)

JOBS = QueueTable("jobs")

# What a worker is doing to a job in each state, for the held message.
_WORK = {
    JobState.RECEIVED: "preparing",
    JobState.PREPARED: "uploading",
    JobState.UPLOADED: "submitting",
    JobState.SUBMITTED: "awaiting the carrier",
}


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# -- accepting mail --------------------------------------------------------------------------------


def create_job(
    conn: sqlite3.Connection, job: NewJob, now: float | None = None, files: Sequence[File] = ()
) -> None:
    """The job (received) and one pending fax per recipient, in one transaction (with the
    shared copies of `files`, its message and converted PDFs, on a store that keeps them)."""
    with transaction(conn):
        insert_job(conn, job, now, files)


def insert_job(
    conn: sqlite3.Connection, job: NewJob, now: float | None = None, files: Sequence[File] = ()
) -> None:
    """create_job's statements, inside the caller's transaction (store/commit.py).

    A number given twice (two spellings of one fax number) is one fax: refusing the message
    with an integrity error would only make the client retry it forever.
    """
    recipients = list(dict.fromkeys(job.recipients))
    if not recipients:
        raise ValueError(f"job {job.id} has no recipients")
    now = _now(now)
    conn.execute(
        "INSERT INTO jobs (id, state, created_at, updated_at, sender, auth_user,"
        " client_address, subject, message_id, from_number, spool_path,"
        " cover, cover_template, resolution, notify)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.id,
            JobState.RECEIVED,
            now,
            now,
            job.sender.lower(),
            job.auth_user,
            job.client_address,
            job.subject,
            job.message_id,
            job.from_number,
            str(job.spool_path),
            None if job.cover is None else int(job.cover),
            job.cover_template,
            job.resolution,
            job.notify,
        ),
    )
    conn.executemany(
        "INSERT INTO faxes (job_id, recipient, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [(job.id, number, FaxState.PENDING, now, now) for number in recipients],
    )
    blobs.put(conn, files, now)


def faxes_sent_since(
    conn: sqlite3.Connection, sender: str, since: float, exclude_jobs: Collection[str] = ()
) -> int:
    """Faxes of `sender`'s jobs created at or after `since`, cancelled ones not counted, nor
    those of `exclude_jobs` (jobs being committed, which the caller counts itself)."""
    excluded, values = _excluded(exclude_jobs)
    row = conn.execute(
        "SELECT count(*) FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
        " WHERE jobs.sender = ? AND jobs.created_at >= ? AND faxes.state != ?" + excluded,
        (sender.lower(), since, FaxState.CANCELLED, *values),
    ).fetchone()
    return int(row[0])


def _excluded(job_ids: Collection[str]) -> tuple[str, tuple[str, ...]]:
    if not job_ids:
        return "", ()
    return f" AND jobs.id NOT IN ({','.join('?' * len(job_ids))})", tuple(job_ids)


def faxes_sent_by_user_since(
    conn: sqlite3.Connection, auth_user: str, since: float, exclude_jobs: Collection[str] = ()
) -> int:
    """Faxes of jobs submitted under login `auth_user` at or after `since`, cancelled ones not
    counted, nor those of `exclude_jobs`."""
    excluded, values = _excluded(exclude_jobs)
    row = conn.execute(
        "SELECT count(*) FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
        " WHERE jobs.auth_user = ? AND jobs.created_at >= ? AND faxes.state != ?" + excluded,
        (auth_user, since, FaxState.CANCELLED, *values),
    ).fetchone()
    return int(row[0])


def find_resent_job(
    conn: sqlite3.Connection,
    sender: str,
    message_id: str,
    recipients: tuple[str, ...],
    since: float,
) -> str | None:
    """The job of the same message queued since `since`: same envelope sender, Message-ID and
    set of recipients (a client resending after a 250 it never saw); None when there is none."""
    if not message_id:
        return None
    wanted = sorted(set(recipients))
    rows = conn.execute(
        "SELECT id FROM jobs WHERE message_id = ? AND sender = ? AND created_at >= ?"
        " ORDER BY created_at",
        (message_id, sender.lower(), since),
    ).fetchall()
    for row in rows:
        numbers = conn.execute(
            "SELECT recipient FROM faxes WHERE job_id = ? ORDER BY recipient", (row["id"],)
        ).fetchall()
        if sorted({number["recipient"] for number in numbers}) == wanted:
            return str(row["id"])
    return None


def insert_job_unless_resent(
    conn: sqlite3.Connection,
    job: NewJob,
    resent_since: float | None,
    now: float | None = None,
    files: Sequence[File] = (),
) -> str | None:
    """Inside the caller's transaction: the id of the job this message already became (same
    sender, Message-ID and recipients since `resent_since`), or insert `job` and return None.
    Check and insert in one transaction, so two copies in parallel sessions make one job."""
    if resent_since is not None:
        resent = find_resent_job(conn, job.sender, job.message_id, job.recipients, resent_since)
        if resent is not None:
            return resent
    insert_job(conn, job, now, files)
    return None


# -- reading ---------------------------------------------------------------------------------------


def get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else Job.from_row(row)


def existing_job_ids(conn: sqlite3.Connection, job_ids: list[str]) -> set[str]:
    """Those of `job_ids` that have a row (to find spool files a crash orphaned)."""
    found: set[str] = set()
    for start in range(0, len(job_ids), 500):  # SQLite's bound on parameters
        chunk = job_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", chunk).fetchall()
        found.update(str(row["id"]) for row in rows)
    return found


def list_jobs(
    conn: sqlite3.Connection, state: JobState | None = None, limit: int = 50
) -> list[Job]:
    """Newest first, optionally only those in `state`."""
    if state is None:
        rows = conn.execute(
            "SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (JobState(state), limit),
        ).fetchall()
    return [Job.from_row(row) for row in rows]


def queue_depth(conn: sqlite3.Connection) -> dict[str, int]:
    """Jobs in each unfinished state (received ... submitted, held), zeros included."""
    depth = {state.value: 0 for state in JobState if state not in FINAL_JOB_STATES}
    rows = conn.execute(
        "SELECT state, count(*) FROM jobs WHERE state NOT IN (?, ?, ?) GROUP BY state",
        tuple(FINAL_JOB_STATES),
    ).fetchall()
    for state, count in rows:
        depth[state] = int(count)
    return depth


# -- the job stages (prepare, upload) --------------------------------------------------------------


def claim_jobs(
    conn: sqlite3.Connection,
    state: JobState,
    now: float | None = None,
    limit: int = 10,
    max_pickups: int = 3,
    *,
    together: bool = False,
) -> list[Job]:
    """Due jobs in `state`, oldest due first, each with one more pickup counted.

    A job whose earlier pickups never finished (`max_pickups` of them: the process died while
    working on it each time) is held instead of returned, with the reason as its error.
    `together`: a stage's batch, worked on at once, whose jobs share their pickups
    (claims.claim_together: a job interrupted before is claimed alone).
    """
    state = JobState(state)
    if state not in PIPELINE:
        raise ValueError(f"jobs in state {state} are not work for a stage")
    now = _now(now)
    with transaction(conn, row_locks=True):
        claimed = (claim_together if together else claim)(
            conn,
            JOBS,
            where="state = ?",
            params=(state,),
            now=now,
            limit=limit,
            max_pickups=max_pickups,
            order="next_attempt_at, created_at, id",
        )
        held = [(row["id"], row["pickups"]) for row in claimed.held]
        for row in claimed.held:
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (JobState.HELD, crash_message(row["pickups"], _WORK[state]), now, row["id"]),
            )
    for job_id, pickups in held:
        # Logged here, once: the job left its state, so it is never held a second time.
        log.error("job.held", job_id=job_id, state=str(state), pickups=pickups)
    return [Job.from_row(row) for row in claimed.rows]


def next_job_due(conn: sqlite3.Connection, state: JobState) -> float | None:
    """When the earliest job in `state` is due (for its stage's worker)."""
    return next_due(conn, JOBS, where="state = ?", params=(JobState(state),))


# Columns a stage may set when it advances a job (validated: names go into the SQL text).
_ADVANCE_COLUMNS = frozenset(
    {
        "document_path",
        "document_type",
        "pages",
        "storage_key",
        "document_url",
        "url_expires_at",
        "error",
    }
)


def advance(
    conn: sqlite3.Connection,
    job_id: str,
    from_state: JobState,
    to_state: JobState,
    *,
    now: float | None = None,
    files: Sequence[File] = (),
    **columns: Any,
) -> bool:
    """Move a job on if it is still in `from_state`; False when it no longer was.

    The new stage starts fresh: attempts, pickups, next attempt and error are reset, and
    `columns` (document_path=..., document_url=...) are set in the same statement; `files`
    (the prepared document) are kept in the store in the same transaction if the job moved.
    """
    with transaction(conn):
        return advance_in(conn, job_id, from_state, to_state, now=now, files=files, **columns)


def advance_in(
    conn: sqlite3.Connection,
    job_id: str,
    from_state: JobState,
    to_state: JobState,
    *,
    now: float | None = None,
    files: Sequence[File] = (),
    **columns: Any,
) -> bool:
    """advance inside the caller's transaction (a stage's outcomes committed together:
    store/commit.py)."""
    unknown = set(columns) - _ADVANCE_COLUMNS
    if unknown:
        raise ValueError(f"advance cannot set {sorted(unknown)}")
    values = {k: str(v) if isinstance(v, Path) else v for k, v in columns.items()}
    now = _now(now)
    # The moment each step was reached, for the status pages' timeline.
    stamp = {JobState.PREPARED: "prepared_at", JobState.UPLOADED: "uploaded_at"}.get(
        JobState(to_state)
    )
    if stamp is not None:
        values[stamp] = now
    assignments = "".join(f", {name} = ?" for name in values)
    cursor = conn.execute(
        "UPDATE jobs SET state = ?, attempts = 0, pickups = 0, next_attempt_at = 0,"
        f" error = NULL, updated_at = ?{assignments} WHERE id = ? AND state = ?",
        (JobState(to_state), now, *values.values(), job_id, JobState(from_state)),
    )
    moved = cursor.rowcount == 1
    if moved:
        blobs.put(conn, files, now)
    return moved


def defer_job(
    conn: sqlite3.Connection,
    job_id: str,
    error: str,
    delay: float,
    now: float | None = None,
) -> int:
    """Try the job's current stage again in `delay` seconds; its attempts so far (0: not found).

    The pickup is finished (reset): a deferral is a handled outcome, not a crash. The try is
    journalled with its reason (store/attempts.py) in the same transaction.
    """
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, pickups = 0,"
            " error = ?, updated_at = ? WHERE id = ? AND state IN (?, ?, ?, ?)"
            " RETURNING attempts, state",
            (now + max(delay, 0.0), error, now, job_id, *PIPELINE),
        ).fetchone()
        if row is not None:
            attempts.note(conn, job_id, attempts.stage_of(row[1]), error, now)
    return 0 if row is None else int(row[0])


def fail_job(
    conn: sqlite3.Connection, job_id: str, error: str, now: float | None = None
) -> list[Fax]:
    """The job cannot go on: it fails, and so does every fax not yet at the carrier.

    Faxes already submitted are left to the carrier, whose outcome will still be recorded and
    told (failing them here could contradict a delivery). Returns the faxes failed just now,
    for their reports; empty if the job was already finished.
    """
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = ?, error = ?, pickups = 0, updated_at = ?"
            " WHERE id = ? AND state NOT IN (?, ?, ?)",
            (JobState.FAILED, error, now, job_id, *FINAL_JOB_STATES),
        )
        if cursor.rowcount != 1:
            return []
        rows = conn.execute(
            "UPDATE faxes SET state = ?, error_description = ?, pickups = 0, finished_at = ?,"
            " updated_at = ? WHERE job_id = ? AND state IN (?, ?) RETURNING *",
            (FaxState.FAILED, error, now, now, job_id, FaxState.PENDING, FaxState.HELD),
        ).fetchall()
    return sorted((Fax.from_row(row) for row in rows), key=lambda fax: fax.id)


def set_document_url(
    conn: sqlite3.Connection,
    job_id: str,
    url: str,
    expires_at: float,
    now: float | None = None,
) -> bool:
    """A freshly signed URL for the job's stored document (the old one was about to expire)."""
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET document_url = ?, url_expires_at = ?, updated_at = ?"
            " WHERE id = ? AND state IN (?, ?)",
            (url, expires_at, now, job_id, JobState.UPLOADED, JobState.SUBMITTED),
        )
    return cursor.rowcount == 1


# -- cleanup ---------------------------------------------------------------------------------------


def document_released(older_than: float) -> tuple[str, tuple[Any, ...]]:
    """The one rule for "the carrier needs this job's document no more", as an SQL condition
    on `jobs` with its parameters: the job is finished and every fax of it final since before
    `older_than` (storage.retention_seconds ago). A final fax was fetched by the carrier or
    never will be. Whatever else must keep a document (a resubmission still to come) belongs
    here, so every deletion obeys it.
    """
    return (
        "jobs.state IN (?, ?, ?) AND NOT EXISTS (SELECT 1 FROM faxes WHERE faxes.job_id = jobs.id"
        " AND (faxes.state NOT IN (?, ?, ?) OR faxes.finished_at IS NULL"
        " OR faxes.finished_at > ?))",
        (*FINAL_JOB_STATES, *FINAL, older_than),
    )


def stored_copies_to_delete(
    conn: sqlite3.Connection, older_than: float, limit: int = 100, due_by: float | None = None
) -> list[Job]:
    """Jobs whose stored copy (S3 object, local storage file) may go now: released
    (`document_released`), whether or not the outcomes are reported yet (a report attaches
    the local document, never the stored copy)."""
    released, params = document_released(older_than)
    rows = conn.execute(
        "SELECT * FROM jobs WHERE storage_key IS NOT NULL AND stored_deleted_at IS NULL"
        f" AND next_attempt_at <= ? AND {released} ORDER BY updated_at, id LIMIT ?",
        (float("inf") if due_by is None else due_by, *params, limit),
    ).fetchall()
    return [Job.from_row(row) for row in rows]


def jobs_to_clean(
    conn: sqlite3.Connection, older_than: float, limit: int = 100, due_by: float | None = None
) -> list[Job]:
    """Finished jobs whose local files (and stored copy, if still there) may go: released
    (`document_released`), every fax reported, and (with `due_by`) no deferred delete due
    later than it.

    Nothing is deleted before its outcome is told: a fax not yet reported keeps its job here.
    A finished job's attempts and next attempt belong to cleanup (`defer_cleanup`): no stage
    claims a job in a final state.
    """
    released, params = document_released(older_than)
    rows = conn.execute(
        f"SELECT * FROM jobs WHERE files_removed_at IS NULL AND {released}"
        " AND next_attempt_at <= ?"
        " AND NOT EXISTS (SELECT 1 FROM faxes WHERE faxes.job_id = jobs.id"
        "   AND faxes.reported_at IS NULL)"
        " ORDER BY updated_at, id LIMIT ?",
        (*params, float("inf") if due_by is None else due_by, limit),
    ).fetchall()
    return [Job.from_row(row) for row in rows]


def defer_cleanup(
    conn: sqlite3.Connection, job_id: str, error: str, due_at: float, now: float
) -> int:
    """Deleting a finished job's documents failed (storage down): try again at `due_at`; the
    attempts so far."""
    with transaction(conn):
        row = conn.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, error = ?,"
            " updated_at = ? WHERE id = ? AND state IN (?, ?, ?) RETURNING attempts",
            (due_at, error, now, job_id, *FINAL_JOB_STATES),
        ).fetchone()
    return 0 if row is None else int(row[0])


def mark_stored_copy_deleted(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    """The job's stored copy is gone; its local files stay until its outcomes are told."""
    with transaction(conn):
        conn.execute(
            "UPDATE jobs SET stored_deleted_at = ?, attempts = 0, error = NULL, updated_at = ?"
            " WHERE id = ?",
            (now, now, job_id),
        )


def mark_document_deleted(conn: sqlite3.Connection, job_id: str, now: float | None = None) -> None:
    """The job's stored document and its local files are gone (their shared copies too)."""
    now = _now(now)
    with transaction(conn):
        if blobs.shares_files(conn):
            row = conn.execute(
                "SELECT spool_path, document_path FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is not None:
                blobs.forget(conn, (row["spool_path"], row["document_path"]))
        conn.execute(
            "UPDATE jobs SET stored_deleted_at = coalesce(stored_deleted_at, ?),"
            " files_removed_at = ?, updated_at = ? WHERE id = ?",
            (now, now, now, job_id),
        )


# -- operators -------------------------------------------------------------------------------------


def retry_job(
    conn: sqlite3.Connection,
    job_id: str,
    now: float | None = None,
    *,
    restart_from: JobState | None = None,
) -> JobState | None:
    """Send a held or failed job back to the earliest stage it has not completed.

    Failed and held faxes are pending again; delivered ones stay delivered. The stage comes
    from the job's columns (no document: received; no usable URL: prepared), or `restart_from`
    when the caller knows a file is missing and an earlier stage is needed. Returns the new
    state, or None if the job is not held or failed.
    """
    if restart_from is not None and JobState(restart_from) not in PIPELINE[:3]:
        raise ValueError(f"a job cannot restart from {restart_from!r}")
    now = _now(now)
    with transaction(conn):
        job = get_job(conn, job_id)
        if job is None or job.state not in (JobState.FAILED, JobState.HELD):
            return None
        # A fax the carrier itself failed starts a fresh round of POSTs. One we failed or
        # held keeps its submit count: a POST of it may have reached the carrier unseen.
        conn.execute(
            "UPDATE faxes SET carrier_id = NULL, carrier_status = NULL, pages = NULL,"
            " duration = NULL, carrier_attempts = NULL, submit_attempts = 0,"
            " submit_started_at = NULL, submit_url = NULL"
            " WHERE job_id = ? AND state = ? AND carrier_id IS NOT NULL",
            (job_id, FaxState.FAILED),
        )
        conn.execute(
            "UPDATE faxes SET state = ?, error_code = NULL, error_description = NULL,"
            " pickups = 0, next_attempt_at = 0, submitted_at = NULL, finished_at = NULL,"
            " reported_at = NULL, report_attempts = 0, report_pickups = 0, report_due_at = 0,"
            " report_error = NULL, rounds = rounds + 1, updated_at = ?"
            " WHERE job_id = ? AND state IN (?, ?)",
            (FaxState.PENDING, now, job_id, FaxState.FAILED, FaxState.HELD),
        )
        stage = _stage_to_resume(conn, job, now)
        if restart_from is not None and PIPELINE.index(JobState(restart_from)) < _order(stage):
            stage = JobState(restart_from)
        document = ""
        if stage is JobState.RECEIVED:
            document = ", document_path = NULL, document_type = NULL, pages = NULL"
        if stage in (JobState.RECEIVED, JobState.PREPARED):
            document += ", document_url = NULL, url_expires_at = NULL, stored_deleted_at = NULL"
        conn.execute(
            "UPDATE jobs SET state = ?, attempts = 0, pickups = 0, next_attempt_at = 0,"
            f" error = NULL, files_removed_at = NULL, updated_at = ?{document} WHERE id = ?",
            (stage, now, job_id),
        )
    return stage


def cancel_job(conn: sqlite3.Connection, job_id: str, now: float | None = None) -> bool:
    """Stop a job: its faxes not yet at the carrier are cancelled. False if already finished.

    Faxes already submitted cannot be called back (the API has no cancel); their outcome is
    still recorded and told.
    """
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = ?, pickups = 0, updated_at = ?"
            " WHERE id = ? AND state NOT IN (?, ?, ?)",
            (JobState.CANCELLED, now, job_id, *FINAL_JOB_STATES),
        )
        if cursor.rowcount != 1:
            return False
        conn.execute(
            "UPDATE faxes SET state = ?, pickups = 0, finished_at = ?, updated_at = ?"
            " WHERE job_id = ? AND state IN (?, ?)",
            (FaxState.CANCELLED, now, now, job_id, FaxState.PENDING, FaxState.HELD),
        )
    return True


# -- a job's faxes (also read by faxes.py) ---------------------------------------------------------


def fax_counts(conn: sqlite3.Connection, job_id: str) -> dict[FaxState, int]:
    """How many of the job's faxes are in each state (a state none is in is left out)."""
    rows = conn.execute(
        "SELECT state, count(*) FROM faxes WHERE job_id = ? GROUP BY state", (job_id,)
    ).fetchall()
    return {FaxState(state): int(count) for state, count in rows}


def all_final(counts: dict[FaxState, int]) -> bool:
    """Every fax counted in `counts` is final."""
    return all(state in FINAL for state in counts)


# -- internals -------------------------------------------------------------------------------------


def _order(state: JobState) -> int:
    return PIPELINE.index(state) if state in PIPELINE else len(PIPELINE)


def _stage_to_resume(conn: sqlite3.Connection, job: Job, now: float) -> JobState:
    if job.document_path is None:
        return JobState.RECEIVED
    url_usable = (
        job.document_url is not None
        and job.stored_deleted_at is None
        and (job.url_expires_at is None or job.url_expires_at > now)
    )
    if not url_usable:
        return JobState.PREPARED
    counts = fax_counts(conn, job.id)
    if counts.get(FaxState.PENDING):
        return JobState.UPLOADED
    if not all_final(counts):
        return JobState.SUBMITTED
    return JobState.DONE
