"""Email-to-fax jobs and their faxes (tables `jobs`, `faxes`): the outbound queue's state machine.

A job is one accepted message; each recipient is one fax. Each stage worker owns one job
transition and every transition is one transaction, guarded by the state it starts from:

    received --prepare--> prepared --upload--> uploaded --submit (per fax)--> submitted --> done
    (held: quarantined for an operator; failed: cannot go on; cancelled: by an operator)

Fax states: pending -> submitted -> delivered | failed, plus held and cancelled. A job is done
when all its faxes are final; it is submitted when none is waiting for its POST any more.

Stage contract: prepare sets `document_path` (with document_type, pages) when it advances to
prepared; upload sets `document_url` (with storage_key, url_expires_at). `retry_job` reads
those columns to find the earliest stage a job has not completed.

Crash safety: a claim counts a pickup *before* work starts and finishing the step resets it,
so pickups that reach the limit mean the step crashed the process that many times; the job
(or fax) is held for a human instead of crash-looping (Mailman's shunt queue). `begin_submit`
commits before the POST, so after a crash the submitter knows a fax may exist at the carrier
and looks it up by its document URL instead of sending it twice.

Functions take an explicit `now` (default: the clock) so tests control time.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.carrier.status import Outcome
from gateway.log import get_logger
from gateway.store.db import transaction

log = get_logger(__name__)


class JobState(StrEnum):
    RECEIVED = "received"
    PREPARED = "prepared"
    UPLOADED = "uploaded"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    CANCELLED = "cancelled"


class FaxState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    CANCELLED = "cancelled"


FINAL = frozenset({FaxState.DELIVERED, FaxState.FAILED, FaxState.CANCELLED})
FINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
# The pipeline in order: what `retry_job` may send a job back to, and what is "earlier".
PIPELINE = (JobState.RECEIVED, JobState.PREPARED, JobState.UPLOADED, JobState.SUBMITTED)
# What a worker is doing to a job in each state, for the held message.
_WORK = {
    JobState.RECEIVED: "preparing",
    JobState.PREPARED: "uploading",
    JobState.UPLOADED: "submitting",
    JobState.SUBMITTED: "awaiting the carrier",
}

# Crockford's base32: ASCII order equals numeric order, so ids sort by time; no I, L, O, U.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_B32_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


def new_job_id(now: float | None = None) -> str:
    """'J' + 10 characters of milliseconds (sortable) + 10 random ones (50 bits): 21 in all."""
    ms = int((time.time() if now is None else now) * 1000)
    stamp = "".join(_CROCKFORD[(ms >> shift) & 31] for shift in range(45, -5, -5))
    tail = base64.b32encode(secrets.token_bytes(10)).decode()[:10].translate(_B32_TO_CROCKFORD)
    return f"J{stamp}{tail}"


@dataclass(frozen=True)
class NewJob:
    """An accepted message, as the SMTP handler hands it to the store."""

    id: str
    sender: str
    auth_user: str | None
    client_address: str | None
    subject: str
    message_id: str
    from_number: str
    spool_path: Path
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    created_at: float
    updated_at: float
    sender: str
    auth_user: str | None
    client_address: str | None
    subject: str
    message_id: str
    from_number: str
    spool_path: Path
    document_path: Path | None
    document_type: str | None
    pages: int | None
    storage_key: str | None
    document_url: str | None
    url_expires_at: float | None
    attempts: int
    pickups: int
    next_attempt_at: float
    error: str | None
    stored_deleted_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = JobState(values["state"])
        values["spool_path"] = Path(values["spool_path"])
        if values["document_path"] is not None:
            values["document_path"] = Path(values["document_path"])
        return cls(**values)


@dataclass(frozen=True)
class Fax:
    id: int
    job_id: str
    recipient: str
    state: FaxState
    carrier_id: str | None
    carrier_status: str | None
    error_code: int | None
    error_description: str | None
    pages: int | None
    duration: int | None
    carrier_attempts: int | None
    submit_attempts: int
    pickups: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    submitted_at: float | None
    finished_at: float | None
    reported_at: float | None
    submit_started_at: float | None
    submit_url: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Fax:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = FaxState(values["state"])
        return cls(**values)

    @property
    def final(self) -> bool:
        return self.state in FINAL


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# -- accepting mail --------------------------------------------------------------------------------


def create_job(conn: sqlite3.Connection, job: NewJob, now: float | None = None) -> None:
    """The job (received) and one pending fax per recipient, in one transaction.

    A number given twice (two spellings of one fax number) is one fax: refusing the message
    with an integrity error would only make the client retry it forever.
    """
    recipients = list(dict.fromkeys(job.recipients))
    if not recipients:
        raise ValueError(f"job {job.id} has no recipients")
    now = _now(now)
    with transaction(conn):
        conn.execute(
            "INSERT INTO jobs (id, state, created_at, updated_at, sender, auth_user,"
            " client_address, subject, message_id, from_number, spool_path)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )
        conn.executemany(
            "INSERT INTO faxes (job_id, recipient, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(job.id, number, FaxState.PENDING, now, now) for number in recipients],
        )


def faxes_sent_since(conn: sqlite3.Connection, sender: str, since: float) -> int:
    """Faxes of `sender`'s jobs created at or after `since`, cancelled ones not counted."""
    row = conn.execute(
        "SELECT count(*) FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
        " WHERE jobs.sender = ? AND jobs.created_at >= ? AND faxes.state != ?",
        (sender.lower(), since, FaxState.CANCELLED),
    ).fetchone()
    return int(row[0])


def faxes_sent_by_user_since(conn: sqlite3.Connection, auth_user: str, since: float) -> int:
    """Faxes of jobs submitted under login `auth_user` at or after `since`, cancelled ones not
    counted."""
    row = conn.execute(
        "SELECT count(*) FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
        " WHERE jobs.auth_user = ? AND jobs.created_at >= ? AND faxes.state != ?",
        (auth_user, since, FaxState.CANCELLED),
    ).fetchone()
    return int(row[0])


# -- reading ---------------------------------------------------------------------------------------


def get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else Job.from_row(row)


def get_fax(conn: sqlite3.Connection, fax_id: int) -> Fax | None:
    row = conn.execute("SELECT * FROM faxes WHERE id = ?", (fax_id,)).fetchone()
    return None if row is None else Fax.from_row(row)


def faxes_of(conn: sqlite3.Connection, job_id: str) -> list[Fax]:
    rows = conn.execute("SELECT * FROM faxes WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    return [Fax.from_row(row) for row in rows]


def fax_by_carrier_id(conn: sqlite3.Connection, carrier_id: str) -> Fax | None:
    row = conn.execute("SELECT * FROM faxes WHERE carrier_id = ?", (carrier_id,)).fetchone()
    return None if row is None else Fax.from_row(row)


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
) -> list[Job]:
    """Due jobs in `state`, oldest due first, each with one more pickup counted.

    A job whose earlier pickups never finished (`max_pickups` of them: the process died while
    working on it each time) is held instead of returned, with the reason as its error.
    """
    state = JobState(state)
    if state not in PIPELINE:
        raise ValueError(f"jobs in state {state} are not work for a stage")
    now = _now(now)
    claimed: list[Job] = []
    held: list[tuple[str, int]] = []
    with transaction(conn):
        rows = conn.execute(
            "SELECT * FROM jobs WHERE state = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, created_at, id LIMIT ?",
            (state, now, limit),
        ).fetchall()
        for row in rows:
            job = Job.from_row(row)
            if job.pickups >= max_pickups:
                conn.execute(
                    "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                    (JobState.HELD, _crash_message(job.pickups, _WORK[job.state]), now, job.id),
                )
                held.append((job.id, job.pickups))
                continue
            row = conn.execute(
                "UPDATE jobs SET pickups = pickups + 1, updated_at = ? WHERE id = ? RETURNING *",
                (now, job.id),
            ).fetchone()
            claimed.append(Job.from_row(row))
    for job_id, pickups in held:
        # Logged here, once: the job left its state, so it is never held a second time.
        log.error("job.held", job_id=job_id, state=str(state), pickups=pickups)
    return claimed


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
    **columns: Any,
) -> bool:
    """Move a job on if it is still in `from_state`; False when it no longer was.

    The new stage starts fresh: attempts, pickups, next attempt and error are reset, and
    `columns` (document_path=..., document_url=...) are set in the same statement.
    """
    unknown = set(columns) - _ADVANCE_COLUMNS
    if unknown:
        raise ValueError(f"advance cannot set {sorted(unknown)}")
    values = {k: str(v) if isinstance(v, Path) else v for k, v in columns.items()}
    assignments = "".join(f", {name} = ?" for name in values)
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = ?, attempts = 0, pickups = 0, next_attempt_at = 0,"
            f" error = NULL, updated_at = ?{assignments} WHERE id = ? AND state = ?",
            (JobState(to_state), now, *values.values(), job_id, JobState(from_state)),
        )
    return cursor.rowcount == 1


def defer_job(
    conn: sqlite3.Connection,
    job_id: str,
    error: str,
    delay: float,
    now: float | None = None,
) -> int:
    """Try the job's current stage again in `delay` seconds; its attempts so far (0: not found).

    The pickup is finished (reset): a deferral is a handled outcome, not a crash.
    """
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, pickups = 0,"
            " error = ?, updated_at = ? WHERE id = ? AND state IN (?, ?, ?, ?)"
            " RETURNING attempts",
            (now + max(delay, 0.0), error, now, job_id, *PIPELINE),
        ).fetchone()
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


# -- the submit stage (per fax) --------------------------------------------------------------------


def claim_faxes(
    conn: sqlite3.Connection,
    now: float | None = None,
    limit: int = 10,
    max_pickups: int = 3,
) -> list[tuple[Fax, Job]]:
    """Due pending faxes of uploaded (or submitted) jobs, each with one more pickup counted.

    A fax whose pickups reached `max_pickups` is held, and its job with it: the job's other
    faxes wait too, since whatever crashed the submitter is likely the job's document.
    """
    now = _now(now)
    claimed: list[tuple[Fax, Job]] = []
    held: list[tuple[int, str, int]] = []
    with transaction(conn):
        rows = conn.execute(
            "SELECT faxes.* FROM faxes JOIN jobs ON jobs.id = faxes.job_id"
            " WHERE faxes.state = ? AND faxes.next_attempt_at <= ? AND jobs.state IN (?, ?)"
            " ORDER BY faxes.next_attempt_at, faxes.id LIMIT ?",
            (FaxState.PENDING, now, JobState.UPLOADED, JobState.SUBMITTED, limit),
        ).fetchall()
        jobs: dict[str, Job | None] = {}
        for row in rows:
            fax = Fax.from_row(row)
            if fax.job_id not in jobs:
                jobs[fax.job_id] = get_job(conn, fax.job_id)
            job = jobs[fax.job_id]
            if job is None or job.state not in (JobState.UPLOADED, JobState.SUBMITTED):
                continue  # held a moment ago because of a sibling
            if fax.pickups >= max_pickups:
                message = _crash_message(fax.pickups, f"submitting the fax to {fax.recipient}")
                conn.execute(
                    "UPDATE faxes SET state = ?, error_description = ?, updated_at = ?"
                    " WHERE id = ?",
                    (FaxState.HELD, message, now, fax.id),
                )
                conn.execute(
                    "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                    (JobState.HELD, message, now, job.id),
                )
                jobs[fax.job_id] = None
                held.append((fax.id, job.id, fax.pickups))
                continue
            row = conn.execute(
                "UPDATE faxes SET pickups = pickups + 1, updated_at = ? WHERE id = ? RETURNING *",
                (now, fax.id),
            ).fetchone()
            claimed.append((Fax.from_row(row), job))
    for fax_id, job_id, pickups in held:
        log.error("fax.held", fax_id=fax_id, job_id=job_id, pickups=pickups)
    return claimed


def begin_submit(
    conn: sqlite3.Connection, fax_id: int, now: float | None = None, url: str | None = None
) -> int | None:
    """Record that a POST of `url` is about to start; the attempts so far, or None if not
    pending.

    Committed before the request: if the process dies before `mark_submitted`, the next
    pickup sees submit_attempts > 0 and must first look for the fax at the carrier (by the
    document URL this POST sent, kept as `submit_url`, and the recipient, created since
    `submit_started_at`) instead of sending it again.
    """
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE faxes SET submit_attempts = submit_attempts + 1,"
            " submit_started_at = coalesce(submit_started_at, ?),"
            " submit_url = coalesce(?, submit_url), updated_at = ?"
            " WHERE id = ? AND state = ? RETURNING submit_attempts",
            (now, url, now, fax_id, FaxState.PENDING),
        ).fetchone()
    return None if row is None else int(row[0])


def mark_submitted(
    conn: sqlite3.Connection,
    fax_id: int,
    carrier_id: str,
    status: str,
    now: float | None = None,
) -> bool:
    """The carrier accepted the fax as `carrier_id`; False if it was already recorded.

    A fax cancelled while its POST was in flight is recorded as submitted all the same: it
    is on its way, and its outcome must be told truthfully. When none of the job's faxes
    waits for a POST any more, the job is submitted (or done, if all are final).
    """
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE faxes SET state = ?, carrier_id = ?, carrier_status = ?, submitted_at = ?,"
            " error_code = NULL, error_description = NULL, pickups = 0, next_attempt_at = 0,"
            " finished_at = NULL, reported_at = NULL, updated_at = ?"
            " WHERE id = ? AND state IN (?, ?) RETURNING job_id",
            (
                FaxState.SUBMITTED,
                carrier_id,
                status,
                now,
                now,
                fax_id,
                FaxState.PENDING,
                FaxState.CANCELLED,
            ),
        ).fetchone()
        if row is None:
            return False
        _settle_job(conn, row[0], now)
    return True


def defer_fax(
    conn: sqlite3.Connection,
    fax_id: int,
    error: str,
    delay: float,
    now: float | None = None,
) -> bool:
    """Try the POST again in `delay` seconds (`submit_attempts` counts the tries so far)."""
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE faxes SET next_attempt_at = ?, error_description = ?, pickups = 0,"
            " updated_at = ? WHERE id = ? AND state = ?",
            (now + max(delay, 0.0), error, now, fax_id, FaxState.PENDING),
        )
    return cursor.rowcount == 1


def fail_fax(
    conn: sqlite3.Connection,
    fax_id: int,
    error_code: int | None,
    error_description: str,
    now: float | None = None,
) -> bool:
    """The fax failed for good (the carrier refused it, its lifetime ran out); False if it
    was already final. The job is done once all its faxes are final."""
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE faxes SET state = ?, error_code = ?, error_description = ?, pickups = 0,"
            " finished_at = ?, updated_at = ? WHERE id = ? AND state NOT IN (?, ?, ?)"
            " RETURNING job_id",
            (FaxState.FAILED, error_code, error_description, now, now, fax_id, *FINAL),
        ).fetchone()
        if row is None:
            return False
        _settle_job(conn, row[0], now)
    return True


# -- the carrier's side (webhooks, reconciler) -----------------------------------------------------


def record_carrier_status(
    conn: sqlite3.Connection,
    carrier_id: str,
    status: str,
    outcome: Outcome,
    pages: int | None = None,
    duration: int | None = None,
    attempts: int | None = None,
    error_code: int | None = None,
    error_description: str | None = None,
    now: float | None = None,
) -> tuple[Fax, bool] | None:
    """Apply what the carrier says about one of our faxes; None if the id is not ours.

    The bool is True only for the call that made the fax final, so its report is made once.
    A final fax is never changed again: a late or out-of-order `delivering` after
    `delivered`, or a repeated webhook, leaves it as it is.
    """
    now = _now(now)
    outcome = Outcome(outcome)
    with transaction(conn):
        row = conn.execute("SELECT * FROM faxes WHERE carrier_id = ?", (carrier_id,)).fetchone()
        if row is None:
            return None
        fax = Fax.from_row(row)
        if fax.final:
            return fax, False
        if outcome is Outcome.PENDING:
            row = conn.execute(
                "UPDATE faxes SET carrier_status = ?, pages = coalesce(?, pages),"
                " duration = coalesce(?, duration), carrier_attempts = coalesce(?,"
                " carrier_attempts), error_code = coalesce(?, error_code),"
                " error_description = coalesce(?, error_description), updated_at = ?"
                " WHERE id = ? RETURNING *",
                (status, pages, duration, attempts, error_code, error_description, now, fax.id),
            ).fetchone()
            return Fax.from_row(row), False
        state = FaxState.DELIVERED if outcome is Outcome.SUCCEEDED else FaxState.FAILED
        row = conn.execute(
            "UPDATE faxes SET state = ?, carrier_status = ?, pages = coalesce(?, pages),"
            " duration = coalesce(?, duration), carrier_attempts = coalesce(?, carrier_attempts),"
            " error_code = ?, error_description = ?, pickups = 0, finished_at = ?,"
            " updated_at = ? WHERE id = ? RETURNING *",
            (
                state,
                status,
                pages,
                duration,
                attempts,
                error_code,
                error_description,
                now,
                now,
                fax.id,
            ),
        ).fetchone()
        _settle_job(conn, fax.job_id, now)
        return Fax.from_row(row), True


def faxes_awaiting_final(conn: sqlite3.Connection, submitted_before: float) -> list[Fax]:
    """Submitted faxes with no final status since before `submitted_before` (to reconcile)."""
    rows = conn.execute(
        "SELECT * FROM faxes WHERE state = ? AND submitted_at < ? ORDER BY submitted_at, id",
        (FaxState.SUBMITTED, submitted_before),
    ).fetchall()
    return [Fax.from_row(row) for row in rows]


# -- reports and cleanup ---------------------------------------------------------------------------


def faxes_to_report(conn: sqlite3.Connection, limit: int = 100) -> list[tuple[Fax, Job]]:
    """Final faxes whose outcome has not been handed to the reporter yet, oldest first.

    Catches every path to a final state (webhook, reconciler, a refused POST, a failed or
    cancelled job), including one a crash interrupted before its report was queued.
    """
    rows = conn.execute(
        "SELECT * FROM faxes WHERE reported_at IS NULL AND state IN (?, ?, ?)"
        " ORDER BY finished_at, id LIMIT ?",
        (*FINAL, limit),
    ).fetchall()
    result: list[tuple[Fax, Job]] = []
    for row in rows:
        fax = Fax.from_row(row)
        job = get_job(conn, fax.job_id)
        if job is not None:
            result.append((fax, job))
    return result


def mark_reported(conn: sqlite3.Connection, fax_id: int, now: float | None = None) -> bool:
    """The fax's outcome report is queued (or deliberately not sent); False if already so."""
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE faxes SET reported_at = ?, updated_at = ?"
            " WHERE id = ? AND reported_at IS NULL AND state IN (?, ?, ?)",
            (now, now, fax_id, *FINAL),
        )
    return cursor.rowcount == 1


def jobs_to_clean(conn: sqlite3.Connection, older_than: float, limit: int = 100) -> list[Job]:
    """Finished jobs whose documents may go: every fax final and reported before `older_than`.

    Nothing is deleted before its outcome is told: a fax not yet reported keeps its job here.
    """
    rows = conn.execute(
        "SELECT * FROM jobs WHERE stored_deleted_at IS NULL AND state IN (?, ?, ?)"
        " AND NOT EXISTS (SELECT 1 FROM faxes WHERE faxes.job_id = jobs.id"
        "   AND (faxes.state NOT IN (?, ?, ?) OR faxes.reported_at IS NULL"
        "        OR faxes.finished_at IS NULL OR faxes.finished_at > ?))"
        " ORDER BY updated_at, id LIMIT ?",
        (*FINAL_JOB_STATES, *FINAL, older_than, limit),
    ).fetchall()
    return [Job.from_row(row) for row in rows]


def mark_document_deleted(conn: sqlite3.Connection, job_id: str, now: float | None = None) -> None:
    """The job's stored document (and its local files) are gone."""
    now = _now(now)
    with transaction(conn):
        conn.execute(
            "UPDATE jobs SET stored_deleted_at = ?, updated_at = ? WHERE id = ?",
            (now, now, job_id),
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
            " reported_at = NULL, updated_at = ? WHERE job_id = ? AND state IN (?, ?)",
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
            f" error = NULL, updated_at = ?{document} WHERE id = ?",
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


# -- internals -------------------------------------------------------------------------------------


def _crash_message(pickups: int, work: str) -> str:
    return f"crashed {pickups} times while {work}; held for an operator"


def _order(state: JobState) -> int:
    return PIPELINE.index(state) if state in PIPELINE else len(PIPELINE)


def _fax_counts(conn: sqlite3.Connection, job_id: str) -> dict[FaxState, int]:
    rows = conn.execute(
        "SELECT state, count(*) FROM faxes WHERE job_id = ? GROUP BY state", (job_id,)
    ).fetchall()
    return {FaxState(state): int(count) for state, count in rows}


def _all_final(counts: dict[FaxState, int]) -> bool:
    return all(state in FINAL for state in counts)


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
    counts = _fax_counts(conn, job.id)
    if counts.get(FaxState.PENDING):
        return JobState.UPLOADED
    if not _all_final(counts):
        return JobState.SUBMITTED
    return JobState.DONE


def _settle_job(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    """Derive the job's state from its faxes' after one of them changed (inside a transaction).

    All final: done. None waiting for a POST: submitted. A failed, cancelled or earlier-stage
    job keeps its state: the faxes' outcomes are told on their own.
    """
    counts = _fax_counts(conn, job_id)
    if _all_final(counts):
        conn.execute(
            "UPDATE jobs SET state = ?, pickups = 0, updated_at = ? WHERE id = ? AND state IN"
            " (?, ?, ?)",
            (JobState.DONE, now, job_id, JobState.UPLOADED, JobState.SUBMITTED, JobState.HELD),
        )
    elif not counts.get(FaxState.PENDING) and not counts.get(FaxState.HELD):
        conn.execute(
            "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
            (JobState.SUBMITTED, now, job_id, JobState.UPLOADED),
        )


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
