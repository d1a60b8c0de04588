"""The history the store lets go: finished rows older than data.retention_days (SQL only).

`purge_rows` removes, in one transaction, what is finished and was last changed before the
cutoff, and returns how many rows of each kind and which files they named (for the caller to
remove after the commit: a file left behind by a crash is found by the next purge's sweep of
unreferenced files, never a row whose file is gone while it is still needed):

- jobs: done, failed or cancelled, every fax reported and the stored copy deleted (a copy
  still in storage keeps its job, so its key is not forgotten); their faxes and their journal
  of attempts (store/attempts.py) with them;
- events: processed;
- outbox: sent, failed or dead mail (a pending one is on its way);
- inbound: mailed and delivered (no file left), and dead letters with their files.

With `dry_run` nothing is removed: the counts say what would be.
`referenced_files` lists every file a remaining row still names; `referenced_among` says which
of some files (the sweep's old ones) a row names, holding only those.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.store import blobs
from gateway.store.db import transaction
from gateway.store.inbound import InboundState
from gateway.store.outbox import OutboxState
from gateway.store.records import FINAL_JOB_STATES

# What a purge counts, in the order it is told (log keys and metric labels).
KINDS = ("jobs", "faxes", "events", "outbox", "inbound", "dead_letters", "files", "archived")

_JOBS = (
    "jobs.state IN (?, ?, ?) AND jobs.updated_at < ?"
    " AND (jobs.storage_key IS NULL OR jobs.stored_deleted_at IS NOT NULL)"
    " AND NOT EXISTS (SELECT 1 FROM faxes WHERE faxes.job_id = jobs.id"
    "   AND faxes.reported_at IS NULL)"
)
_EVENTS = "processed_at IS NOT NULL AND processed_at < ?"
_OUTBOX = "state IN (?, ?, ?) AND updated_at < ?"
_INBOUND_MAILED = "state = ? AND file_path IS NULL AND updated_at < ?"
_INBOUND_DEAD = "state = ? AND updated_at < ?"


@dataclass
class Purged:
    """Rows removed (or, dry, that would be) by kind, and the files they named."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    files: list[Path] = field(default_factory=list)


def purge_rows(conn: sqlite3.Connection, cutoff: float, *, dry_run: bool = False) -> Purged:
    """Remove finished rows last changed before `cutoff` (see the module docstring)."""
    purged = Purged()
    job_params = (*FINAL_JOB_STATES, cutoff)
    outbox_params = (OutboxState.SENT, OutboxState.FAILED, OutboxState.DEAD, cutoff)
    mailed_params = (InboundState.MAILED, cutoff)
    dead_params = (InboundState.DEAD, cutoff)
    with transaction(conn):
        jobs = conn.execute(
            f"SELECT id, spool_path, document_path FROM jobs WHERE {_JOBS}", job_params
        ).fetchall()
        purged.counts["jobs"] = len(jobs)
        for row in jobs:
            purged.files += [Path(p) for p in (row["spool_path"], row["document_path"]) if p]
        purged.counts["faxes"] = _count(
            conn, f"faxes WHERE job_id IN (SELECT id FROM jobs WHERE {_JOBS})", job_params
        )
        purged.counts["events"] = _count(conn, f"events WHERE {_EVENTS}", (cutoff,))
        messages = conn.execute(
            f"SELECT message_path FROM outbox WHERE {_OUTBOX}", outbox_params
        ).fetchall()
        purged.counts["outbox"] = len(messages)
        purged.files += [Path(row["message_path"]) for row in messages]
        purged.counts["inbound"] = _count(conn, f"inbound WHERE {_INBOUND_MAILED}", mailed_params)
        dead = conn.execute(
            f"SELECT file_path FROM inbound WHERE {_INBOUND_DEAD}", dead_params
        ).fetchall()
        purged.counts["dead_letters"] = len(dead)
        purged.files += [Path(row["file_path"]) for row in dead if row["file_path"]]
        if dry_run:
            return purged
        blobs.forget(conn, purged.files)  # the shared copies, where the store keeps them
        for table in ("faxes", "attempts"):
            conn.execute(
                f"DELETE FROM {table} WHERE job_id IN (SELECT id FROM jobs WHERE {_JOBS})",
                job_params,
            )
        conn.execute(f"DELETE FROM jobs WHERE {_JOBS}", job_params)
        conn.execute(f"DELETE FROM events WHERE {_EVENTS}", (cutoff,))
        conn.execute(f"DELETE FROM outbox WHERE {_OUTBOX}", outbox_params)
        conn.execute(f"DELETE FROM inbound WHERE {_INBOUND_MAILED}", mailed_params)
        conn.execute(f"DELETE FROM inbound WHERE {_INBOUND_DEAD}", dead_params)
    return purged


def referenced_files(conn: sqlite3.Connection) -> set[Path]:
    """Every file a row still names: jobs' spool and documents (until cleaned), inbound
    documents, outbox messages."""
    return set(_named(conn))


def referenced_among(
    conn: sqlite3.Connection, candidates: set[Path], local: Callable[[Path], Path]
) -> set[Path]:
    """Those of `candidates` some row still names (each row's path seen as this node's copy,
    `local`). The rows are read as a stream: what is held is bounded by the candidates (the
    old files on disk), not by the rows, which a busy gateway's outbox alone counts in the
    hundreds of thousands over its retention days."""
    return {found for path in _named(conn) if (found := local(path)) in candidates}


def _named(conn: sqlite3.Connection) -> Iterator[Path]:
    for row in conn.execute(
        "SELECT spool_path, document_path FROM jobs WHERE files_removed_at IS NULL"
    ):
        yield from (Path(p) for p in (row["spool_path"], row["document_path"]) if p)
    for row in conn.execute("SELECT file_path FROM inbound WHERE file_path IS NOT NULL"):
        yield Path(row["file_path"])
    for row in conn.execute("SELECT message_path FROM outbox"):
        yield Path(row["message_path"])


def _count(conn: sqlite3.Connection, source: str, params: tuple[object, ...]) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {source}", params).fetchone()[0])
