"""The story of one fax, told from what the store keeps: the event timeline of the detail page.

Each row keeps the time of the steps it records (a job's creation, a fax's POST and outcome,
each webhook in `events`, each mail in `outbox`); jobs record when they were prepared and
uploaded (`prepared_at`, `uploaded_at`); a job from before those columns is dated by its
document file when the file is still there. Every deferred try of prepare, upload and a fax's
POST is in the journal of attempts (store/attempts.py), each shown with its time and reason.
A job from before the journal has only its row's attempt count and last error, shown as they
are. Inbound faxes and mails keep their attempt count and last error only.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from gateway.inbound.files import mail_key
from gateway.numbers import pretty
from gateway.outbound.reports import report_key
from gateway.store.attempts import Attempt, attempts_of, stage_of
from gateway.store.events import events_of
from gateway.store.inbound import InboundFax, InboundState
from gateway.store.outbox import OutboxMessage, get_by_key
from gateway.store.records import FINAL_JOB_STATES, Fax, FaxState, Job, JobState

# The kinds of report a fax may have had mailed (outbound/reports.py).
REPORT_KINDS = ("queued", "delivered", "failed")


@dataclass(frozen=True)
class Entry:
    at: float | None  # None: the step happened but no time was recorded for it
    what: str
    detail: str = ""
    problem: bool = False


def _sorted(entries: list[Entry]) -> list[Entry]:
    """By time; an undated entry keeps its place after the dated one before it."""
    keyed: list[tuple[float, int, Entry]] = []
    last = 0.0
    for index, entry in enumerate(entries):
        last = entry.at if entry.at is not None else last
        keyed.append((last, index, entry))
    return [entry for _, _, entry in sorted(keyed, key=lambda k: (k[0], k[1]))]


def _mtime(path: object) -> float | None:
    try:
        return os.stat(str(path)).st_mtime if path is not None else None
    except OSError:
        return None


def _mail(message: OutboxMessage, what: str) -> list[Entry]:
    to = ", ".join(message.recipients)
    entries = [Entry(message.created_at, f"{what} queued", f"to {to}")]
    if message.sent_at is not None:
        entries.append(Entry(message.sent_at, f"{what} sent", f"to {to}"))
    elif message.state != "pending":
        entries.append(
            Entry(message.updated_at, f"{what} {message.state}", message.error or "", True)
        )
    elif message.attempts:
        entries.append(
            Entry(
                message.updated_at,
                f"{what} deferred",
                f"{message.attempts} attempt(s); last error: {message.error or '-'}",
                True,
            )
        )
    return entries


def _tries(count: int, unit: str, error: str | None, journalled: list[Attempt]) -> str:
    """A retry's summary: the count, and the row's last error unless it is the reason of the
    last journalled try, shown on a line of its own. A row's error may come from elsewhere
    than a deferral (a fax resubmitted keeps the carrier's failure of its last try, then its
    next POST was begun: no deferral journals that), and then only the summary tells it."""
    text = f"{count} {unit}"
    if journalled and (error is None or error == journalled[-1].reason):
        return text
    return f"{text}; last error: {error or '-'}"


def _attempt(attempt: Attempt, who: dict[int, str]) -> Entry:
    what = f"{attempt.stage} deferred"
    if attempt.fax_id is not None and attempt.fax_id in who:
        what += f" ({who[attempt.fax_id]})"
    return Entry(attempt.at, what, attempt.reason, True)


def job_timeline(conn: sqlite3.Connection, job: Job, faxes: list[Fax]) -> list[Entry]:
    numbers = ", ".join(pretty(f.recipient) for f in faxes)
    entries = [Entry(job.created_at, "received", f"from {job.sender} for {numbers}")]
    journal = attempts_of(conn, job.id)
    who = {fax.id: pretty(fax.recipient) for fax in faxes}
    entries += [_attempt(attempt, who) for attempt in journal]
    prepared = job.pages is not None or job.document_path is not None
    if prepared:
        pages = f"{job.pages} page(s)" if job.pages is not None else ""
        when = job.prepared_at if job.prepared_at is not None else _mtime(job.document_path)
        entries.append(Entry(when, "prepared", pages))
    if job.storage_key is not None or job.document_url is not None:
        entries.append(
            Entry(job.uploaded_at, "uploaded", "the carrier fetches it from a signed link")
        )
    for fax in faxes:
        who = pretty(fax.recipient)
        if fax.submitted_at is not None:
            posts = f", {fax.submit_attempts} POSTs" if fax.submit_attempts > 1 else ""
            entries.append(
                Entry(
                    fax.submitted_at, f"submitted to {who}", f"carrier id {fax.carrier_id}{posts}"
                )
            )
        if fax.carrier_id:
            for event in events_of(conn, fax.carrier_id):
                detail = f"status {event.status}"
                if event.error:
                    detail += f"; {event.error}"
                entries.append(Entry(event.received_at, "webhook", detail, bool(event.error)))
        if fax.finished_at is not None:
            detail = fax.error_description or ""
            if fax.state is FaxState.DELIVERED and fax.pages:
                detail = f"{fax.pages} page(s)"
            entries.append(
                Entry(
                    fax.finished_at,
                    f"{fax.state.value} ({who})",
                    detail,
                    fax.state is FaxState.FAILED,
                )
            )
        elif fax.state in (FaxState.PENDING, FaxState.HELD) and fax.submit_attempts:
            entries.append(
                Entry(
                    fax.updated_at,
                    f"{'held' if fax.state is FaxState.HELD else 'retrying'} ({who})",
                    _tries(
                        fax.submit_attempts,
                        "POST(s)",
                        fax.error_description,
                        [a for a in journal if a.fax_id == fax.id],
                    ),
                    True,
                )
            )
        for kind in REPORT_KINDS:
            message = get_by_key(conn, report_key(fax, kind))
            if message is not None:
                entries.extend(_mail(message, f"{kind} report"))
        if fax.report_error:
            entries.append(Entry(fax.reported_at, "report not sent", fax.report_error, True))
    if job.state is JobState.HELD:
        entries.append(Entry(job.updated_at, "held", job.error or "", True))
    elif job.state is JobState.FAILED:
        entries.append(Entry(job.updated_at, "job failed", job.error or "", True))
    elif job.state is JobState.CANCELLED:
        entries.append(Entry(job.updated_at, "cancelled", ""))
    elif job.state not in FINAL_JOB_STATES and job.attempts:
        entries.append(
            Entry(
                job.updated_at,
                f"retrying ({job.state.value})",
                _tries(
                    job.attempts,
                    "attempt(s)",
                    job.error,
                    [a for a in journal if a.stage == stage_of(job.state)],
                ),
                True,
            )
        )
    return _sorted(entries)


def inbound_timeline(conn: sqlite3.Connection, fax: InboundFax) -> list[Entry]:
    entries = [
        Entry(
            fax.created_at,
            "announced",
            f"from {pretty(fax.from_number)} to {pretty(fax.to_number)}",
        )
    ]
    for event in events_of(conn, fax.carrier_id):
        detail = f"status {event.status}"
        if event.error:
            detail += f"; {event.error}"
        entries.append(Entry(event.received_at, "webhook", detail, bool(event.error)))
    if fax.file_path is not None or fax.state in (InboundState.STORED, InboundState.MAILED):
        pages = f"{fax.pages} page(s)" if fax.pages else ""
        entries.append(Entry(_mtime(fax.file_path), "stored", pages))
    message = get_by_key(conn, mail_key(fax.carrier_id))
    if message is not None:
        entries.extend(_mail(message, "mail"))
    if fax.state is InboundState.DEAD:
        entries.append(Entry(fax.updated_at, "dead letter", fax.error or "", True))
    elif fax.attempts and fax.error:
        entries.append(
            Entry(
                fax.updated_at,
                "retrying",
                f"{fax.attempts} attempt(s); last error: {fax.error}",
                True,
            )
        )
    return _sorted(entries)
