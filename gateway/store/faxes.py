"""Each fax's life at the carrier (table `faxes`): its POST, the carrier's statuses, its report.

One fax per recipient of a job (states and rows: store/records.py; the job's pipeline up to
uploaded: store/jobs.py). A job's state follows its faxes' in one place, `settle_job`: the job
is done when all its faxes are final, and submitted when none is waiting for its POST any more.

Crash safety: `claim_faxes` counts a pickup before the submit starts, as the job claims do, and
holds a fax (and its job) whose pickups reached the limit. `begin_submit` commits before the
POST, so after a crash the submitter knows a fax may exist at the carrier and looks it up by
its document URL instead of sending it twice.

Functions take an explicit `now` (default: the clock) so tests control time.
"""

from __future__ import annotations

import sqlite3
import time

from gateway.carrier.faxerrors import resubmittable
from gateway.carrier.status import Outcome
from gateway.log import get_logger
from gateway.queue.schedule import crash_message
from gateway.store import attempts
from gateway.store.claims import QueueTable, claim, lock_row, next_due, unclaim
from gateway.store.db import transaction
from gateway.store.jobs import all_final, fax_counts, get_job
from gateway.store.records import FINAL, Fax, FaxState, Job, JobState

log = get_logger(__name__)

# The submit step's queue: pending faxes of jobs whose document is uploaded.
SUBMITS = QueueTable("faxes")
_WITH_JOBS = "faxes JOIN jobs ON jobs.id = faxes.job_id"
_SUBMITTABLE = "faxes.state = ? AND jobs.state IN (?, ?)"
_SUBMITTING = (JobState.UPLOADED, JobState.SUBMITTED)
_UNREPORTED = "reported_at IS NULL AND state IN (?, ?, ?)"


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# -- reading ---------------------------------------------------------------------------------------


def get_fax(conn: sqlite3.Connection, fax_id: int) -> Fax | None:
    row = conn.execute("SELECT * FROM faxes WHERE id = ?", (fax_id,)).fetchone()
    return None if row is None else Fax.from_row(row)


def faxes_of(conn: sqlite3.Connection, job_id: str) -> list[Fax]:
    rows = conn.execute("SELECT * FROM faxes WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
    return [Fax.from_row(row) for row in rows]


def fax_by_carrier_id(conn: sqlite3.Connection, carrier_id: str) -> Fax | None:
    row = conn.execute("SELECT * FROM faxes WHERE carrier_id = ?", (carrier_id,)).fetchone()
    return None if row is None else Fax.from_row(row)


# -- the submit stage (per fax) --------------------------------------------------------------------


def claim_faxes(
    conn: sqlite3.Connection,
    now: float | None = None,
    limit: int = 10,
    max_pickups: int = 3,
    lease: float = 0.0,
) -> list[tuple[Fax, Job]]:
    """Due pending faxes of uploaded (or submitted) jobs, each with one more pickup counted
    (and, with `lease`, not due again for that long: several POSTs run at once, and a fax
    being submitted must not be claimed a second time meanwhile).

    A fax whose pickups reached `max_pickups` is held, and its job with it: the job's other
    faxes wait too, since whatever crashed the submitter is likely the job's document.
    """
    now = _now(now)
    held: list[tuple[int, str, int]] = []
    with transaction(conn, row_locks=True):
        found = claim(
            conn,
            SUBMITS,
            source=_WITH_JOBS,
            where=_SUBMITTABLE,
            params=(FaxState.PENDING, JobState.UPLOADED, JobState.SUBMITTED),
            now=now,
            limit=limit,
            max_pickups=max_pickups,
            lease=lambda _pickups: lease,
        )
        held_jobs: set[str] = set()
        for row in found.held:
            fax = Fax.from_row(row)
            if fax.job_id in held_jobs:
                continue
            if not lock_row(conn, "jobs", fax.job_id):
                continue  # another transaction is changing the job: held at the next claim
            message = crash_message(fax.pickups, f"submitting the fax to {fax.recipient}")
            conn.execute(
                "UPDATE faxes SET state = ?, error_description = ?, updated_at = ? WHERE id = ?",
                (FaxState.HELD, message, now, fax.id),
            )
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (JobState.HELD, message, now, fax.job_id),
            )
            held_jobs.add(fax.job_id)
            held.append((fax.id, fax.job_id, fax.pickups))
        claimed: list[tuple[Fax, Job]] = []
        for row in found.rows:
            fax = Fax.from_row(row)
            job = get_job(conn, fax.job_id)
            if job is None or fax.job_id in held_jobs or job.state not in _SUBMITTING:
                # Its job was held just now because of a sibling, or (PostgreSQL, where the
                # claim locks the fax and not its job) left uploaded since the claim read it:
                # this pickup never started.
                unclaim(conn, SUBMITS, fax.id, now)
                continue
            claimed.append((fax, job))
    for fax_id, job_id, pickups in held:
        log.error("fax.held", fax_id=fax_id, job_id=job_id, pickups=pickups)
    return claimed


def next_submit_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending fax of an uploaded or submitted job is due."""
    return next_due(
        conn,
        SUBMITS,
        source=_WITH_JOBS,
        where=_SUBMITTABLE,
        params=(FaxState.PENDING, JobState.UPLOADED, JobState.SUBMITTED),
    )


def end_pickup(conn: sqlite3.Connection, fax_id: int, now: float) -> None:
    """The submit step ended without recording an outcome (its job went back to upload, it
    was cancelled meanwhile): the pickup is finished and the fax is due as it was."""
    with transaction(conn):
        end_pickup_in(conn, fax_id, now)


def end_pickup_in(conn: sqlite3.Connection, fax_id: int, now: float) -> None:
    """end_pickup inside the caller's transaction (store/commit.py)."""
    conn.execute(
        "UPDATE faxes SET pickups = 0, next_attempt_at = min(next_attempt_at, ?)"
        " WHERE id = ? AND state = ? AND pickups > 0",
        (now, fax_id, FaxState.PENDING),
    )


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
    with transaction(conn):
        return begin_submit_in(conn, fax_id, now, url)


def begin_submit_in(
    conn: sqlite3.Connection, fax_id: int, now: float | None = None, url: str | None = None
) -> int | None:
    """begin_submit inside the caller's transaction (store/commit.py: committed, as every
    write there, before its caller hears of it, so still before the POST)."""
    now = _now(now)
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
    with transaction(conn):
        return mark_submitted_in(conn, fax_id, carrier_id, status, now)


def mark_submitted_in(
    conn: sqlite3.Connection,
    fax_id: int,
    carrier_id: str,
    status: str,
    now: float | None = None,
) -> bool:
    """mark_submitted inside the caller's transaction (store/commit.py)."""
    now = _now(now)
    row = conn.execute(
        "UPDATE faxes SET state = ?, carrier_id = ?, carrier_status = ?, submitted_at = ?,"
        " error_code = NULL, error_description = NULL, pickups = 0, next_attempt_at = 0,"
        " finished_at = NULL, reported_at = NULL, report_attempts = 0, report_pickups = 0,"
        " report_due_at = 0, report_error = NULL, updated_at = ?"
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
    settle_job(conn, row[0], now)
    return True


def defer_fax(
    conn: sqlite3.Connection,
    fax_id: int,
    error: str,
    delay: float,
    now: float | None = None,
) -> bool:
    """Try the POST again in `delay` seconds (`submit_attempts` counts the tries so far); the
    try is journalled with its reason (store/attempts.py) in the same transaction."""
    now = _now(now)
    with transaction(conn):
        row = conn.execute(
            "UPDATE faxes SET next_attempt_at = ?, error_description = ?, pickups = 0,"
            " updated_at = ? WHERE id = ? AND state = ? RETURNING job_id",
            (now + max(delay, 0.0), error, now, fax_id, FaxState.PENDING),
        ).fetchone()
        if row is not None:
            attempts.note(conn, str(row[0]), attempts.SUBMIT, error, now, fax_id)
    return row is not None


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
        settle_job(conn, row[0], now)
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
    resubmit_attempts: int = 0,
    resubmit_delay: float = 0.0,
) -> tuple[Fax, bool] | None:
    """Apply what the carrier says about one of our faxes; None if the id is not ours.

    The bool is True only for the call that made the fax final, so its report is made once.
    A final fax is never changed again: a late or out-of-order `delivering` after
    `delivered`, or a repeated webhook, leaves it as it is.

    A failure of the call (`faxerrors.resubmittable`) of a fax resubmitted fewer than
    `resubmit_attempts` times does not make it final: in the same transaction it goes back to
    pending, due in `resubmit_delay` seconds, its `resubmits` counted and its submit round
    (`submit_attempts`, `submit_started_at`) started afresh, so the submit worker's usual
    begin_submit discipline sends it exactly once more. It keeps the failed try's carrier id
    and error until that POST: a replayed event finds it waiting and changes nothing.
    """
    now = _now(now)
    outcome = Outcome(outcome)
    with transaction(conn):
        row = conn.execute("SELECT * FROM faxes WHERE carrier_id = ?", (carrier_id,)).fetchone()
        if row is None:
            return None
        fax = Fax.from_row(row)
        if fax.final or fax.state is not FaxState.SUBMITTED:
            # Final, or waiting to be resubmitted (pending with the failed try's id).
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
        if (
            outcome is Outcome.FAILED
            and fax.resubmits < resubmit_attempts
            and resubmittable(status, error_code)
        ):
            row = conn.execute(
                "UPDATE faxes SET state = ?, carrier_status = ?, pages = coalesce(?, pages),"
                " duration = coalesce(?, duration), carrier_attempts = coalesce(?,"
                " carrier_attempts), error_code = ?, error_description = ?,"
                " resubmits = resubmits + 1, submit_attempts = 0, submit_started_at = NULL,"
                " pickups = 0, next_attempt_at = ?, updated_at = ? WHERE id = ? RETURNING *",
                (
                    FaxState.PENDING,
                    status,
                    pages,
                    duration,
                    attempts,
                    error_code,
                    error_description,
                    now + max(resubmit_delay, 0.0),
                    now,
                    fax.id,
                ),
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
        settle_job(conn, fax.job_id, now)
        return Fax.from_row(row), True


def faxes_awaiting_final(conn: sqlite3.Connection, submitted_before: float) -> list[Fax]:
    """Submitted faxes with no final status since before `submitted_before` (to reconcile)."""
    rows = conn.execute(
        "SELECT * FROM faxes WHERE state = ? AND submitted_at < ? ORDER BY submitted_at, id",
        (FaxState.SUBMITTED, submitted_before),
    ).fetchall()
    return [Fax.from_row(row) for row in rows]


# -- reports ---------------------------------------------------------------------------------------


# The report step's queue discipline lives on the fax row, beside the submit step's.
REPORTS = QueueTable(
    "faxes",
    due="report_due_at",
    pickups="report_pickups",
    touched=None,
    owner="report_claimed_by",
    lease="report_lease_until",
)


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
    return _with_jobs(conn, rows)


def claim_reports(
    conn: sqlite3.Connection, now: float, limit: int, max_pickups: int
) -> tuple[list[tuple[Fax, Job]], list[tuple[Fax, Job]]]:
    """(claimed, held): final faxes not yet reported whose report is due, each with a pickup
    counted; those whose report kept interrupting the process are marked reported with the
    reason as `report_error` (their outcome is in the store and the queue tools)."""
    with transaction(conn, row_locks=True):
        claimed = claim(
            conn,
            REPORTS,
            where=_UNREPORTED,
            params=tuple(FINAL),
            now=now,
            limit=limit,
            max_pickups=max_pickups,
            order="report_due_at, finished_at, id",
        )
        for row in claimed.held:
            conn.execute(
                "UPDATE faxes SET reported_at = ?, report_error = ? WHERE id = ?",
                (now, crash_message(row["report_pickups"], "writing its report"), row["id"]),
            )
        return _with_jobs(conn, claimed.rows), _with_jobs(conn, claimed.held)


def defer_report(
    conn: sqlite3.Connection, fax_id: int, error: str, due_at: float, now: float
) -> int:
    """The report could not be queued: try again at `due_at`; the report's attempts so far."""
    with transaction(conn):
        row = conn.execute(
            "UPDATE faxes SET report_attempts = report_attempts + 1, report_due_at = ?,"
            " report_pickups = 0, report_error = ? WHERE id = ? AND reported_at IS NULL"
            " RETURNING report_attempts",
            (due_at, error, fax_id),
        ).fetchone()
    return 0 if row is None else int(row[0])


def next_report_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest report not yet queued is due."""
    return next_due(conn, REPORTS, where=_UNREPORTED, params=tuple(FINAL))


def mark_reported(
    conn: sqlite3.Connection, fax_id: int, now: float | None = None, error: str | None = None
) -> bool:
    """The fax's outcome report is queued (or deliberately not sent, or given up with
    `error`); False if already so."""
    now = _now(now)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE faxes SET reported_at = ?, updated_at = ?, report_pickups = 0,"
            " report_error = ? WHERE id = ? AND reported_at IS NULL AND state IN (?, ?, ?)",
            (now, now, error, fax_id, *FINAL),
        )
    return cursor.rowcount == 1


def _with_jobs(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[tuple[Fax, Job]]:
    result: list[tuple[Fax, Job]] = []
    for row in rows:
        fax = Fax.from_row(row)
        job = get_job(conn, fax.job_id)
        if job is not None:
            result.append((fax, job))
    return result


# -- the job's state, from its faxes ---------------------------------------------------------------


def settle_job(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    """Derive the job's state from its faxes' after one of them changed (inside a transaction).

    All final: done. None waiting for a POST: submitted. A failed, cancelled or earlier-stage
    job keeps its state: the faxes' outcomes are told on their own.
    """
    counts = fax_counts(conn, job_id)
    if all_final(counts):
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
