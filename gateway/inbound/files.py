"""Where inbound fax documents live on disk, and the dead letters an operator looks after.

A stored document is in data.dir/inbound/ while its mail is on its way, and moves to
data.dir/dead-letter/ when the mail could not be delivered (gateway/inbound/worker.py decides when).
`list_dead_letters` and `requeue_dead_letter` are for the queue tools (`fax-gateway queue
dead-letter`); they are blocking, like every function taking a connection.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document import kinds
from gateway.fsutil import fsync_dir, make_private_dirs, write_atomic
from gateway.mailout.outbox import requeue_mail
from gateway.store import blobs
from gateway.store.inbound import InboundFax, InboundState, get_inbound, inbound_in_state, revive


def mail_key(carrier_id: str) -> str:
    """The outbox key of an inbound fax's mail: one mail per fax, however often queued."""
    return f"inbound:{carrier_id}"


def stored_name(fax: InboundFax, content_type: str | None) -> str:
    """File name under inbound/: unique by row id, recognisable by the carrier id."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", fax.carrier_id)[:80]
    return f"{fax.id:06d}-{safe_id}{kinds.extension(content_type or '')}"


def locate(path: Path, config: Config) -> Path | None:
    """Where a stored document is now: its recorded path, or the same name in the other folder.

    A crash between moving a file (dead letter, requeue) and recording its new path leaves the
    record one step behind; the file is then found by its unique name.
    """
    if path.exists():
        return path
    data = DataDir(config.data.dir)
    for folder in (data.inbound, data.dead_letter):
        candidate = folder / path.name
        if candidate.exists():
            return candidate
    return None


def move_durably(source: Path, folder: Path) -> Path:
    """Move `source` into `folder` (same file system: both under data.dir). Blocking."""
    make_private_dirs(folder)
    target = folder / source.name
    if source != target:
        os.replace(source, target)
        fsync_dir(folder)
        fsync_dir(source.parent)
    return target


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def list_dead_letters(conn: sqlite3.Connection) -> list[InboundFax]:
    """Inbound faxes that could not be mailed (or fetched), oldest first."""
    return inbound_in_state(conn, InboundState.DEAD)


def requeue_dead_letter(
    conn: sqlite3.Connection,
    inbound_id: int,
    *,
    data_dir: Path | None = None,
    now: float | None = None,
) -> InboundState:
    """Give a dead inbound fax another round; the state it is back in.

    With its file: the file returns to data.dir/inbound/ and its mail is requeued in the
    outbox with a fresh attempt count (mailed), or built again if the outbox no longer has it
    (stored). Without a file (the download gave up): it is fetched again (announced).
    `data_dir` defaults to the folder above the dead-letter one the file is in. Blocking:
    command-line tools call it directly, the daemon through `Database.run`.
    Raises LookupError for an unknown id and ValueError for a fax that is not dead.
    """
    at = time.time() if now is None else now
    fax = get_inbound(conn, inbound_id)
    if fax is None:
        raise LookupError(f"no inbound fax {inbound_id}")
    if fax.state is not InboundState.DEAD:
        raise ValueError(f"inbound fax {inbound_id} is {fax.state}, not dead")
    if fax.file_path is None:
        revive(conn, fax.id, InboundState.ANNOUNCED, None, at)
        return InboundState.ANNOUNCED
    recorded = Path(fax.file_path)
    data = DataDir(data_dir if data_dir is not None else recorded.parent.parent)
    source = recorded if recorded.exists() else data.dead_letter / recorded.name
    if not source.exists():
        source = data.inbound / recorded.name
    if not source.exists():
        # Kept by another node sharing the store: this node's copy, from the store.
        for _name, copy in blobs.read(conn, recorded):
            write_atomic(source, copy)
    if not source.exists():
        raise FileNotFoundError(f"the file of inbound fax {inbound_id} ({recorded}) is missing")
    path = move_durably(source, data.inbound)
    if requeue_mail(conn, mail_key(fax.carrier_id), at):
        state = InboundState.MAILED
    else:
        # Sent after all, or its message file is gone: the mail step builds it again (and
        # requeues the outbox entry with it) or finds it sent.
        state = InboundState.STORED
    revive(conn, fax.id, state, str(path), at)
    return state
