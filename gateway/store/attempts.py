"""The journal of attempts: each time a job's stage was tried and deferred, and why.

A job's row keeps only the current stage's attempt count and its last error; this table keeps
every deferral of prepare, upload and submit (one row per try, `stage` and `reason`), so the
status pages' timeline (ui/timeline.py) can tell the operator each one. Rows are written by
`note`, inside the one transaction that records the deferral (`jobs.defer_job` for prepare and
upload, `faxes.defer_fax` for a fax's POST); nothing else writes here. A job keeps its latest
`KEEP_PER_JOB` rows (a job deferred for days at the maximum backoff would otherwise grow without
end), and its rows go with it when retention purges the job (`retention.purge_rows`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.store.records import JobState

# The latest tries of a job that are kept; older ones are dropped as new ones come.
KEEP_PER_JOB = 50

# The stage a job's state is waiting for (what was tried when a job in that state deferred).
STAGE_OF_STATE = {JobState.RECEIVED: "prepare", JobState.PREPARED: "upload"}
SUBMIT = "submit"


@dataclass(frozen=True)
class Attempt:
    """One try that was deferred: when, which stage (and fax, for a POST), and why."""

    at: float
    stage: str
    reason: str
    fax_id: int | None


def stage_of(state: JobState | str) -> str:
    """The stage a job in `state` was trying (its state's name for any other)."""
    state = JobState(state)
    return STAGE_OF_STATE.get(state, state.value)


def note(
    conn: sqlite3.Connection,
    job_id: str,
    stage: str,
    reason: str,
    now: float,
    fax_id: int | None = None,
) -> None:
    """Journal one deferred try, inside the caller's transaction; the job keeps its latest
    KEEP_PER_JOB."""
    conn.execute(
        "INSERT INTO attempts (job_id, fax_id, stage, reason, at) VALUES (?, ?, ?, ?, ?)",
        (job_id, fax_id, stage, reason, now),
    )
    conn.execute(
        "DELETE FROM attempts WHERE job_id = ? AND id <= (SELECT id FROM attempts"
        " WHERE job_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (job_id, job_id, KEEP_PER_JOB),
    )


def attempts_of(conn: sqlite3.Connection, job_id: str) -> list[Attempt]:
    """The job's journalled tries, oldest first."""
    rows = conn.execute(
        "SELECT at, stage, reason, fax_id FROM attempts WHERE job_id = ? ORDER BY id",
        (job_id,),
    ).fetchall()
    return [
        Attempt(
            at=float(row["at"]),
            stage=str(row["stage"]),
            reason=str(row["reason"]),
            fax_id=None if row["fax_id"] is None else int(row["fax_id"]),
        )
        for row in rows
    ]
