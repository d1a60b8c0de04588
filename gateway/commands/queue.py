"""`fax-gateway queue ...`: the operator's view of the store, and the few moves a person makes.

list / show       the email-to-fax jobs and their faxes
retry / cancel    a held or failed job goes back to work; an unfinished job stops
dead-letter       inbound faxes that could not be mailed, and `requeue` to try again
outbox            the mails waiting to go out or given up on
purge             what is finished and old goes now, as the daily retention purge does it

They open the store file (data.dir/store.db) beside a running daemon: WAL lets both read, and
each change is one of the store's own guarded transactions, so a worker holding the job at
the same moment either sees the change or its own update is refused. The daemon has no
wake-up channel from outside; its periodic scan (queue.scan_interval_seconds) finds the work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway import log
from gateway.cli import UserError, add_config_argument, config_from_args
from gateway.commands import queueview
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.inbound.archive import Archive
from gateway.inbound.files import list_dead_letters, requeue_dead_letter
from gateway.ops import retention
from gateway.storage import S3Storage, create_storage
from gateway.store import Database, blobs
from gateway.store import faxes as fax_store
from gateway.store import jobs as jobs_store
from gateway.store import outbox as outbox_store
from gateway.store.backend import create_database
from gateway.store.db import StoreError
from gateway.store.inbound import InboundFax, InboundState, get_inbound, inbound_by_carrier_id
from gateway.store.outbox import OutboxState
from gateway.store.records import FINAL_JOB_STATES, Fax, FaxState, Job, JobState

logger = log.get_logger(__name__)

DEFAULT_LIMIT = 50
# Where `queue retry` can send a job, and what a held or failed job is waiting for.
RETRYABLE = frozenset({JobState.HELD, JobState.FAILED})

Action = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "queue",
        help="list, inspect, retry and cancel queued faxes; dead letters; the outbox",
        description=(
            "Look at and act on the gateway's queues in its store (data.dir/store.db). Safe "
            "while the gateway runs; it picks changes up at its next scan."
        ),
    )
    actions = parser.add_subparsers(dest="queue_action", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="email-to-fax jobs, newest first",
        description=(
            "One line per job: id, state, age, sender, numbers, pages, attempts (tries of the "
            "current stage plus POSTs to the carrier) and the last error. A job is 'done' once "
            "the carrier has told the outcome of each of its faxes, delivered or failed (the "
            "last error says why one failed; 'queue show' has each fax); 'failed' means the "
            "gateway gave up on the job, and its faxes not yet at the carrier failed with it."
        ),
    )
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only this state")
    listing.add_argument(
        "--limit",
        type=_whole_number,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N jobs (default {DEFAULT_LIMIT}; 0 = all)",
    )
    _json_and_config(listing, run_list)

    show = actions.add_parser("show", help="one job and its faxes in full")
    show.add_argument("job", metavar="JOB", help="the job id (as in 'queued as <id>')")
    _json_and_config(show, run_show)

    retry = actions.add_parser(
        "retry",
        help="send a held or failed job back to work",
        description=(
            "Put a held or failed job back at the earliest stage it has not completed; its "
            "failed and held faxes are sent again, delivered ones are not."
        ),
    )
    retry.add_argument("job", metavar="JOB")
    add_config_argument(retry)
    retry.set_defaults(run=run_retry)

    cancel = actions.add_parser(
        "cancel",
        help="stop a job: faxes not yet at the carrier are not sent",
        description=(
            "Cancel a job that is not finished. Faxes already at the carrier cannot be called "
            "back; their outcome is still reported. The sender is not told of cancelled faxes."
        ),
    )
    cancel.add_argument("job", metavar="JOB")
    add_config_argument(cancel)
    cancel.set_defaults(run=run_cancel)

    dead = actions.add_parser(
        "dead-letter",
        help="inbound faxes that could not be mailed; 'requeue ID' tries one again",
        description=(
            "Inbound faxes given up on: their mail could not be delivered (the file is kept in "
            "data.dir/dead-letter/) or their document could not be fetched."
        ),
    )
    _json_and_config(dead, run_dead_letters)
    dead_actions = dead.add_subparsers(dest="dead_letter_action", metavar="ACTION")
    requeue = dead_actions.add_parser(
        "requeue",
        help="try a dead inbound fax again",
        description=(
            "Put a dead inbound fax back to work: its mail is sent again, or its document "
            "fetched again if it never arrived."
        ),
    )
    requeue.add_argument("id", metavar="ID", help="the ID column of the list, or a carrier id")
    # SUPPRESS: a subcommand's default would overwrite a --config given before 'requeue'.
    requeue.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help="configuration file"
    )
    requeue.set_defaults(run=run_requeue)

    outbox = actions.add_parser(
        "outbox",
        help="mails the gateway sends: waiting, failed, given up",
        description="The outbox: reports and inbound faxes by mail, oldest first.",
    )
    outbox.add_argument(
        "--state",
        choices=[s.value for s in OutboxState],
        help="only this state (default: all but sent)",
    )
    _json_and_config(outbox, run_outbox)

    purge = actions.add_parser(
        "purge",
        help="remove finished jobs, faxes, events, mails and inbound faxes older than a time",
        description=(
            "What the daily retention purge does (data.retention_days), by hand: finished "
            "rows last changed before the cutoff and their files, files no row names, and "
            "archived faxes past inbound.archive_retention_days. Nothing unfinished is touched."
        ),
    )
    purge.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="cutoff age such as 7d, 12h, 30m or 90s (default: data.retention_days)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; remove nothing")
    _json_and_config(purge, run_purge)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 7d, 12h, 30m or 90s")
    return float(int(number) * _UNITS[unit])


def _json_and_config(parser: argparse.ArgumentParser, run: Action) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_config_argument(parser)
    parser.set_defaults(run=run)


def _whole_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


# -- the store --------------------------------------------------------------------------------


@contextmanager
def open_store(config: Config) -> Iterator[Database]:
    """The gateway's store, which must exist already: a typo in data.dir must not make a new,
    empty one that then shows an empty queue."""
    if config.store.backend != "sqlite":
        yield from _open_shared_store(config)
        return
    path = DataDir(config.data.dir).store
    if not path.is_file():
        raise UserError(
            f"no store at {path}: is data.dir right, and has the gateway run with this "
            "configuration?"
        )
    db = Database(path)
    try:
        db.open_sync()
    except (StoreError, sqlite3.Error, OSError) as exc:
        db.close()
        raise UserError(
            f"cannot open the store {path}: {exc} (run as the gateway's user?)"
        ) from None
    try:
        yield db
    except sqlite3.Error as exc:
        # Locked past the busy timeout, read-only, corrupt: say so, no traceback.
        raise UserError(f"the store {path} failed: {exc}") from None
    finally:
        db.close()


def _open_shared_store(config: Config) -> Iterator[Database]:
    db = create_database(config)
    where = getattr(db, "where", config.store.backend)
    try:
        db.open_sync()
    except (StoreError, sqlite3.Error, OSError) as exc:
        db.close()
        raise UserError(f"cannot open the store at {where}: {exc}") from None
    try:
        yield db
    except sqlite3.Error as exc:
        raise UserError(f"the store at {where} failed: {exc}") from None
    finally:
        db.close()


def _pickup_note(config: Config) -> str:
    return f"within {config.queue.scan_interval_seconds:g} s by the running gateway"


def _say(text: str) -> None:
    """Print; a reader that went away (`queue list | head`) ends the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null, or Python reports the pipe again when it flushes at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _print_json(value: Any) -> None:
    _say(json.dumps(value, indent=2, ensure_ascii=False))


def _load_job(conn: sqlite3.Connection, job_id: str) -> tuple[Job, list[Fax]] | None:
    text = job_id.strip()
    # Ids are upper case; one typed or pasted in lower case still names the job.
    for candidate in dict.fromkeys((text, text.upper())):
        job = jobs_store.get_job(conn, candidate)
        if job is not None:
            return job, fax_store.faxes_of(conn, job.id)
    return None


def _job(db: Database, job_id: str) -> tuple[Job, list[Fax]]:
    found = db.run_sync(_load_job, job_id)
    if found is None:
        raise UserError(f"no job {job_id!r} in the queue (see 'fax-gateway queue list')")
    return found


def _jobs_with_faxes(
    conn: sqlite3.Connection, state: JobState | None, limit: int
) -> list[tuple[Job, list[Fax]]]:
    # LIMIT -1 is SQLite's "no limit".
    jobs = jobs_store.list_jobs(conn, state, limit if limit > 0 else -1)
    return [(job, fax_store.faxes_of(conn, job.id)) for job in jobs]


# -- jobs -------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    state = JobState(args.state) if args.state else None
    with open_store(config) as db:
        entries = db.run_sync(_jobs_with_faxes, state, args.limit)
        depth = db.run_sync(jobs_store.queue_depth)
    now = time.time()
    if args.json:
        _print_json([queueview.job_dict(job, faxes, now) for job, faxes in entries])
        return 0
    if entries:
        _say(queueview.jobs_table(entries, now))
    else:
        _say(f"no jobs in state {state}" if state else "no jobs")
    waiting = ", ".join(f"{name} {count}" for name, count in depth.items())
    _say(f"\nunfinished: {waiting}")
    return 0


def _places(
    conn: sqlite3.Connection, data_dir: Path, paths: Iterable[Path | str | None]
) -> dict[str, blobs.Whereabouts]:
    """Where each file is, seen from this node (queueview.Places)."""
    return {str(p): blobs.whereabouts(conn, data_dir, p) for p in paths if p is not None}


def run_show(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        job, faxes = _job(db, args.job)
        places = db.run_sync(_places, config.data.dir, (job.spool_path, job.document_path))
    now = time.time()
    if args.json:
        _print_json(queueview.job_dict(job, faxes, now, places))
    else:
        _say(queueview.describe_job(job, faxes, now, places))
    return 0


def restart_stage(conn: sqlite3.Connection, job: Job, data_dir: Path) -> JobState | None:
    """The stage a retry must restart from because the document is gone, or None.

    retry_job trusts the job's columns; only here is the disk looked at (and, where nodes
    share the store, the store's copy: another node's file). A job without its document
    (never made, or removed) is prepared from its spooled message, which must then still be
    there, or the retry would only fail again.
    """

    def have(path: Path) -> bool:
        return blobs.whereabouts(conn, data_dir, path) is not blobs.Whereabouts.MISSING

    if job.document_path is not None and have(job.document_path):
        return None
    if not have(job.spool_path):
        raise UserError(
            f"job {job.id} cannot be retried: its message ({job.spool_path}) is gone and it "
            "has no document (cleaned up after it finished?); ask the sender to send it again"
        )
    return None if job.document_path is None else JobState.RECEIVED


def run_retry(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        job, _ = _job(db, args.job)
        if job.state not in RETRYABLE:
            raise UserError(_not_retryable(job))
        restart_from = db.run_sync(restart_stage, job, config.data.dir)
        stage = db.run_sync(jobs_store.retry_job, job.id, restart_from=restart_from)
        if stage is None:
            changed, _ = _job(db, job.id)
            raise UserError(f"job {job.id} changed meanwhile: {_not_retryable(changed)}")
        faxes = db.run_sync(fax_store.faxes_of, job.id)
    logger.info(
        "job.retried", job_id=job.id, from_state=job.state.value, state=stage.value, by="operator"
    )
    pending = sum(1 for fax in faxes if fax.state is FaxState.PENDING)
    if stage is JobState.DONE:
        _say(f"job {job.id}: every fax is final already; it is done, nothing to send")
        return 0
    why = " (its document is gone: it is prepared again from the message)" if restart_from else ""
    _say(
        f"job {job.id}: {job.state} -> {stage}{why}; {pending} fax(es) to send, "
        f"picked up {_pickup_note(config)}"
    )
    return 0


def _not_retryable(job: Job) -> str:
    if job.state in FINAL_JOB_STATES:
        return f"job {job.id} is {job.state}; only held or failed jobs can be retried"
    return (
        f"job {job.id} is {job.state}, still in the queue; only held or failed jobs can be retried"
    )


def run_cancel(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        job, _ = _job(db, args.job)
        if job.state in FINAL_JOB_STATES:
            raise UserError(f"job {job.id} is already {job.state}; there is nothing to cancel")
        if not db.run_sync(jobs_store.cancel_job, job.id):
            raise UserError(f"job {job.id} finished meanwhile; there is nothing to cancel")
        faxes = db.run_sync(fax_store.faxes_of, job.id)
    logger.info("job.cancelled", job_id=job.id, from_state=job.state.value, by="operator")
    cancelled = [fax for fax in faxes if fax.state is FaxState.CANCELLED]
    at_carrier = [fax for fax in faxes if fax.state is FaxState.SUBMITTED]
    lines = [f"job {job.id}: cancelled ({len(cancelled)} fax(es) will not be sent)"]
    if at_carrier:
        lines.append(
            f"{len(at_carrier)} fax(es) already at the carrier cannot be called back; "
            "their outcome is still reported to the sender"
        )
    if cancelled:
        lines.append("the sender is not told of the cancelled faxes")
    _say("\n".join(lines))
    return 0


# -- dead letters -----------------------------------------------------------------------------


def run_dead_letters(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        dead = db.run_sync(list_dead_letters)
        places = db.run_sync(_places, config.data.dir, (fax.file_path for fax in dead))
    now = time.time()
    if args.json:
        _print_json([queueview.dead_letter_dict(fax, now, places) for fax in dead])
    elif dead:
        _say(queueview.dead_letters_table(dead, now, places))
        _say("\nfax-gateway queue dead-letter requeue ID  tries one again")
    else:
        _say("no dead letters")
    return 0


def _find_inbound(conn: sqlite3.Connection, key: str) -> InboundFax | None:
    text = key.strip()
    if text.isdigit():
        found = get_inbound(conn, int(text))
        if found is not None:
            return found
    return inbound_by_carrier_id(conn, text)


_REQUEUED = {
    InboundState.MAILED: "its mail is queued again and goes out",
    InboundState.STORED: "its mail is built again and goes out",
    InboundState.ANNOUNCED: "its document is fetched from the carrier again",
}


def run_requeue(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        fax = db.run_sync(_find_inbound, args.id)
        if fax is None:
            raise UserError(
                f"no inbound fax {args.id!r} (see 'fax-gateway queue dead-letter' for the ids)"
            )
        if fax.state is not InboundState.DEAD:
            raise UserError(
                f"inbound fax {fax.id} ({fax.carrier_id}) is {fax.state}, not a dead letter"
            )
        try:
            state = db.run_sync(requeue_dead_letter, fax.id, data_dir=config.data.dir)
        except (LookupError, ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
    logger.info("inbound.requeued", inbound_id=fax.id, carrier_id=fax.carrier_id, state=state.value)
    _say(f"inbound fax {fax.id} ({fax.carrier_id}): {_REQUEUED[state]} {_pickup_note(config)}")
    return 0


# -- outbox -----------------------------------------------------------------------------------


def run_outbox(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with open_store(config) as db:
        if args.state:
            messages = db.run_sync(outbox_store.list_messages, OutboxState(args.state))
        else:
            # Sent mail is history, and it grows without bound: left out unless asked for.
            messages = [
                message
                for state in OutboxState
                if state is not OutboxState.SENT
                for message in db.run_sync(outbox_store.list_messages, state)
            ]
            messages.sort(key=lambda message: message.id)
    now = time.time()
    if args.json:
        _print_json([queueview.outbox_dict(message) for message in messages])
    elif messages:
        _say(queueview.outbox_table(messages, now))
    else:
        _say(f"no {args.state} mail" if args.state else "no mail waiting or given up on")
    return 0


# -- retention --------------------------------------------------------------------------------


def run_purge(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    older_than = args.older_than
    if older_than is None:
        days = config.data.retention_days
        if days == 0:
            raise UserError("data.retention_days is 0 (keep forever): give --older-than AGE")
        older_than = days * retention.DAY
    archive = None
    if config.inbound.archive_s3_prefix is not None:
        storage = create_storage(config, None)
        archive = Archive(storage if isinstance(storage, S3Storage) else None)
    with open_store(config) as db:
        counts = asyncio.run(
            retention.purge(
                db,
                config,
                older_than=older_than,
                now=time.time(),
                dry_run=args.dry_run,
                archive=archive,
            )
        )
    if not args.dry_run:
        logger.info("retention.purged", by_hand=True, older_than=older_than, **counts)
    if args.json:
        _print_json({"dry_run": args.dry_run, "older_than_seconds": older_than, **counts})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    _say("\n".join(f"{verb} {count} {kind.replace('_', ' ')}" for kind, count in counts.items()))
    return 0
