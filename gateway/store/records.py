"""The outbound queue's words and rows, shared by store/jobs.py and store/faxes.py.

A job is one accepted message (table `jobs`); each recipient is one fax (table `faxes`). Job
states, in the order of the pipeline:

    received --prepare--> prepared --upload--> uploaded --submit (per fax)--> submitted --> done
    (held: quarantined for an operator; failed: cannot go on; cancelled: by an operator)

Fax states: pending -> submitted -> delivered | failed, plus held and cancelled.

The states, the row types and job ids live here so that the job pipeline (jobs.py) and each
fax's carrier life (faxes.py) share them without a cycle: faxes.py imports jobs.py, never the
other way round.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path


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
    # The message's own settings (address options, [senders]); None: the configuration's.
    cover: bool | None = None
    cover_template: str | None = None
    resolution: str | None = None  # "fine" | "standard": a hint the carrier API cannot take
    notify: str | None = None  # "none" | "failure" | "all": which reports the sender gets


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
    stored_deleted_at: float | None  # the stored copy (storage, for the carrier) is gone
    files_removed_at: float | None = None  # the spool file and the assembled document are gone
    prepared_at: float | None = None  # when the job entered "prepared" (None: before migration 12)
    uploaded_at: float | None = None  # when the job entered "uploaded"
    # As in NewJob (None too for jobs from before the migration that added them).
    cover: bool | None = None
    cover_template: str | None = None
    resolution: str | None = None
    notify: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = JobState(values["state"])
        if values["cover"] is not None:
            values["cover"] = bool(values["cover"])
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
    # The report step's queue discipline (gateway/queue/schedule.py), beside the submit step's.
    report_attempts: int = 0
    report_pickups: int = 0
    report_due_at: float = 0.0
    report_error: str | None = None
    # Times the fax failed on the line and was put back to pending to be sent again
    # (fax.resubmit_attempts); it has been tried resubmits + 1 times.
    resubmits: int = 0
    # Times an operator sent the failed or held fax back to pending (jobs.retry_job).
    rounds: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Fax:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = FaxState(values["state"])
        return cls(**values)

    @property
    def final(self) -> bool:
        return self.state in FINAL
