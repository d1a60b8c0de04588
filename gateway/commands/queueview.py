"""How the queue tools show the store to a person (aligned tables) and to a script (JSON).

Functions of what the store returned, the current time and where the files named are
(`Places`: on this node, only in the store shared by several nodes, or missing:
store/blobs.py `whereabouts`), so the views are the same whichever command prints them and
tests can pin the clock. Tables keep one line per row: long errors are cut and whitespace
collapsed; `--json` has the full text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.numbers import pretty
from gateway.store.blobs import Whereabouts
from gateway.store.inbound import InboundFax
from gateway.store.outbox import OutboxMessage, OutboxState
from gateway.store.records import Fax, Job

ERROR_WIDTH = 60
# More numbers than this in a list row are summarised ("+3 more"); `show` has them all.
ROW_NUMBERS = 2

JOB_COLUMNS = ("JOB", "STATE", "AGE", "SENDER", "NUMBERS", "PAGES", "ATTEMPTS", "LAST ERROR")
FAX_COLUMNS = ("FAX", "NUMBER", "STATE", "CARRIER ID", "STATUS", "POSTS", "ERROR")
DEAD_COLUMNS = ("ID", "CARRIER ID", "AGE", "FROM", "TO", "PAGES", "ATTEMPTS", "FILE", "ERROR")
OUTBOX_COLUMNS = ("ID", "STATE", "KIND", "AGE", "TO", "ATTEMPTS", "NEXT TRY", "ERROR")

_SPACE = re.compile(r"\s+")
# Characters a terminal obeys instead of showing (C0 and C1 controls, DEL) or that reorder what
# it shows (bidi controls): values from outside (a Subject, a sender, a carrier's error) carry
# them as easily as text, and ESC sequences retitle the window, clear the screen or hide what
# follows. Every cell and field is printed with them escaped ("\\x1b"); `--json` keeps them.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every terminal control character written as its escape."""
    return _CONTROLS.sub(lambda m: ascii(m.group())[1:-1], text)


# Where each file a row names is, by the path as the row names it (a path not in it: missing).
Places = Mapping[str, Whereabouts]
# What a table says of a file that is not on this node's disk.
_NOTES = {
    Whereabouts.LOCAL: "",
    Whereabouts.SHARED: " (in the shared store; no copy on this node yet)",
    Whereabouts.MISSING: " (missing)",
}


def place(places: Places, path: Path | str | None) -> Whereabouts | None:
    """Where the file at `path` is (None: the row names no file)."""
    if path is None:
        return None
    return places.get(str(path), Whereabouts.MISSING)


# -- generic ----------------------------------------------------------------------------------


def table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, header first, no trailing blanks."""
    lines = [tuple(columns), *(tuple(printable(cell) for cell in row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """`label  value` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {printable(value)}".rstrip() for label, value in pairs)


def age(seconds: float) -> str:
    """A short duration for a table cell: 42s, 7m, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clip(text: str | None, width: int = ERROR_WIDTH) -> str:
    """One line of at most `width` characters ('...' marks a cut); '' for None."""
    if not text:
        return ""
    line = _SPACE.sub(" ", text).strip()
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def _value(where: Whereabouts | None) -> str | None:
    return None if where is None else where.value


def iso(moment: float | None) -> str | None:
    """A stored epoch time as ISO 8601 UTC (for JSON), or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(moment: float | None, now: float) -> str:
    """A stored time for people: UTC date and time with its age, or '-'."""
    if moment is None:
        return "-"
    stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({age(now - moment)} ago)"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _numbers(numbers: Sequence[str]) -> str:
    shown = ", ".join(pretty(number) for number in numbers[:ROW_NUMBERS])
    extra = len(numbers) - ROW_NUMBERS
    return f"{shown} +{extra} more" if extra > 0 else shown


# -- jobs -------------------------------------------------------------------------------------


def job_attempts(job: Job, faxes: Sequence[Fax]) -> int:
    """Tries so far: of the job's current stage, plus the POSTs of its faxes."""
    return job.attempts + sum(fax.submit_attempts for fax in faxes)


def fax_error(fax: Fax) -> str | None:
    if fax.error_description is None and fax.error_code is None:
        return None
    if fax.error_code is None:
        return fax.error_description
    return f"{fax.error_code} {fax.error_description or ''}".strip()


def last_error(job: Job, faxes: Sequence[Fax]) -> str | None:
    """The job's own error, else the most recently changed fax's."""
    if job.error:
        return job.error
    with_errors = [fax for fax in faxes if fax_error(fax)]
    if not with_errors:
        return None
    return fax_error(max(with_errors, key=lambda fax: (fax.updated_at, fax.id)))


def job_row(job: Job, faxes: Sequence[Fax], now: float) -> tuple[str, ...]:
    return (
        job.id,
        job.state.value,
        age(now - job.created_at),
        job.sender,
        _numbers([fax.recipient for fax in faxes]),
        _count(job.pages),
        str(job_attempts(job, faxes)),
        clip(last_error(job, faxes)),
    )


def jobs_table(entries: Sequence[tuple[Job, Sequence[Fax]]], now: float) -> str:
    return table(JOB_COLUMNS, (job_row(job, faxes, now) for job, faxes in entries))


def fax_dict(fax: Fax) -> dict[str, Any]:
    return {
        "id": fax.id,
        "recipient": fax.recipient,
        "state": fax.state.value,
        "carrier_id": fax.carrier_id,
        "carrier_status": fax.carrier_status,
        "error_code": fax.error_code,
        "error": fax.error_description,
        "pages": fax.pages,
        "duration": fax.duration,
        "carrier_attempts": fax.carrier_attempts,
        "submit_attempts": fax.submit_attempts,
        "next_attempt_at": iso(fax.next_attempt_at or None),
        "created_at": iso(fax.created_at),
        "updated_at": iso(fax.updated_at),
        "submitted_at": iso(fax.submitted_at),
        "finished_at": iso(fax.finished_at),
        "reported_at": iso(fax.reported_at),
    }


def job_dict(
    job: Job, faxes: Sequence[Fax], now: float, places: Places | None = None
) -> dict[str, Any]:
    """Everything the store knows about a job and its faxes, JSON-ready; with `places` (`show`)
    also where its message and document are ("local", "shared", "missing"; null: none)."""
    found = (
        {}
        if places is None
        else {
            "spool_whereabouts": _value(place(places, job.spool_path)),
            "document_whereabouts": _value(place(places, job.document_path)),
        }
    )
    return {
        "id": job.id,
        "state": job.state.value,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "age_seconds": round(max(0.0, now - job.created_at), 3),
        "sender": job.sender,
        "auth_user": job.auth_user,
        "client_address": job.client_address,
        "subject": job.subject,
        "message_id": job.message_id,
        "from_number": job.from_number,
        "cover": job.cover,
        "cover_template": job.cover_template,
        "resolution": job.resolution,
        "notify": job.notify,
        "numbers": [fax.recipient for fax in faxes],
        "pages": job.pages,
        "document_type": job.document_type,
        "spool_path": str(job.spool_path),
        "document_path": None if job.document_path is None else str(job.document_path),
        **found,
        "storage_key": job.storage_key,
        "document_url_expires_at": iso(job.url_expires_at),
        "document_deleted_at": iso(job.stored_deleted_at),
        "attempts": job_attempts(job, faxes),
        "stage_attempts": job.attempts,
        "pickups": job.pickups,
        "next_attempt_at": iso(job.next_attempt_at or None),
        "error": job.error,
        "last_error": last_error(job, faxes),
        "faxes": [fax_dict(fax) for fax in faxes],
    }


def job_settings(job: Job) -> str:
    """The message's own settings (address options, [senders]), as the address writes them."""
    words = []
    if job.cover is not None:
        words.append("cover" if job.cover else "nocover")
    if job.cover_template is not None:
        words.append(f"cover template {job.cover_template}")
    if job.resolution is not None:
        words.append(job.resolution)
    if job.notify is not None:
        words.append(f"notify={job.notify}")
    return ", ".join(words)


def _file(path: Path | None, places: Places) -> str:
    where = place(places, path)
    return "-" if where is None else f"{path}{_NOTES[where]}"


def describe_job(job: Job, faxes: Sequence[Fax], now: float, places: Places) -> str:
    """`queue show`: the job's fields, then a table of its faxes."""
    pairs: list[tuple[str, str]] = [
        ("job", job.id),
        ("state", job.state.value),
        ("received", when(job.created_at, now)),
        ("updated", when(job.updated_at, now)),
        ("sender", job.sender),
    ]
    if job.auth_user:
        pairs.append(("login", job.auth_user))
    if job.client_address:
        pairs.append(("client", job.client_address))
    pairs += [
        ("subject", job.subject or "-"),
        ("from number", pretty(job.from_number)),
    ]
    settings = job_settings(job)
    if settings:
        pairs.append(("settings", settings))
    pairs += [
        ("pages", _count(job.pages)),
        ("attempts", f"{job.attempts} of this stage, {job.pickups} unfinished pickups"),
    ]
    if job.next_attempt_at > now:
        pairs.append(("next try", f"in {age(job.next_attempt_at - now)}"))
    if job.error:
        pairs.append(("error", _SPACE.sub(" ", job.error)))
    pairs.append(("message", _file(job.spool_path, places)))
    pairs.append(("document", _file(job.document_path, places)))
    if job.stored_deleted_at is not None:
        pairs.append(("cleaned", when(job.stored_deleted_at, now)))
    faxes_text = table(
        FAX_COLUMNS,
        (
            (
                str(fax.id),
                pretty(fax.recipient),
                fax.state.value,
                fax.carrier_id or "-",
                fax.carrier_status or "-",
                str(fax.submit_attempts),
                clip(fax_error(fax)),
            )
            for fax in faxes
        ),
    )
    return f"{fields(pairs)}\n\n{faxes_text}"


# -- dead letters -----------------------------------------------------------------------------


def dead_letter_row(fax: InboundFax, now: float, places: Places) -> tuple[str, ...]:
    where = place(places, fax.file_path)
    file = "-" if where is None else Path(str(fax.file_path)).name + _NOTES[where]
    return (
        str(fax.id),
        fax.carrier_id,
        age(now - fax.created_at),
        pretty(fax.from_number),
        pretty(fax.to_number),
        _count(fax.pages),
        str(fax.attempts),
        file,
        clip(fax.error),
    )


def dead_letters_table(faxes: Sequence[InboundFax], now: float, places: Places) -> str:
    return table(DEAD_COLUMNS, (dead_letter_row(fax, now, places) for fax in faxes))


def dead_letter_dict(fax: InboundFax, now: float, places: Places) -> dict[str, Any]:
    return {
        "id": fax.id,
        "carrier_id": fax.carrier_id,
        "state": fax.state.value,
        "from_number": fax.from_number,
        "to_number": fax.to_number,
        "pages": fax.pages,
        "duration": fax.duration,
        "fax_time": fax.fax_time,
        "file_path": fax.file_path,
        "file_exists": place(places, fax.file_path) is Whereabouts.LOCAL,
        "file_whereabouts": _value(place(places, fax.file_path)),
        "attempts": fax.attempts,
        "error": fax.error,
        "created_at": iso(fax.created_at),
        "updated_at": iso(fax.updated_at),
        "age_seconds": round(max(0.0, now - fax.created_at), 3),
    }


# -- outbox -----------------------------------------------------------------------------------


def outbox_row(message: OutboxMessage, now: float) -> tuple[str, ...]:
    if message.state is not OutboxState.PENDING:
        next_try = "-"
    elif message.next_attempt_at <= now:
        next_try = "due"
    else:
        next_try = f"in {age(message.next_attempt_at - now)}"
    recipients = ", ".join(message.recipients[:ROW_NUMBERS])
    if len(message.recipients) > ROW_NUMBERS:
        recipients += f" +{len(message.recipients) - ROW_NUMBERS} more"
    return (
        str(message.id),
        message.state.value,
        message.kind,
        age(now - message.created_at),
        recipients,
        str(message.attempts),
        next_try,
        clip(message.error),
    )


def outbox_table(messages: Sequence[OutboxMessage], now: float) -> str:
    return table(OUTBOX_COLUMNS, (outbox_row(message, now) for message in messages))


def outbox_dict(message: OutboxMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "key": message.key,
        "kind": message.kind,
        "state": message.state.value,
        "recipients": list(message.recipients),
        "message_path": str(message.message_path),
        "attempts": message.attempts,
        "next_attempt_at": iso(message.next_attempt_at or None),
        "error": message.error,
        "created_at": iso(message.created_at),
        "updated_at": iso(message.updated_at),
        "sent_at": iso(message.sent_at),
    }
