"""The files of data.dir that nodes sharing a store share: one copy in the store, one per node.

With the SQLite store the files in data.dir are the truth, as they always were, and nothing here
costs anything: every function below returns at once (`shares_files` is False). With PostgreSQL
(`[store] backend = "postgresql"`, several nodes, each with its own data.dir) a file that a row
names is also a row of table `blobs`, so a node that dies leaves nothing that only its disk
holds:

- **written in the transaction that makes the row**: the raw message and the PDFs converted
  beside it with the job (`jobs.insert_job`, so "250 only after the message and its row are
  durable" is still one commit), the prepared document with the step to `prepared`
  (`jobs.advance`), a mail with its outbox row (`outbox.enqueue`, `requeue`), a received fax
  with `stored` (`inbound.mark_stored`);
- **read through the node's working copy**: `SharedFiles.fetch` gives the local path of a file
  a row names (rows keep the path in the data.dir of the node that wrote them; another node's
  is the same folder and name under its own data.dir), written there from the store first when
  this node lacks it (atomic: a temp name, then a rename);
- **deleted with the row's last need of it**: cleanup (`jobs.mark_document_deleted`), the daily
  purge (`retention.purge_rows`), a sent mail (`outbox.mark_sent`), a delivered inbound fax
  (`inbound.set_file_path` to None). Working copies of files whose shared copy is gone are
  removed by each node's own sweep (`sweep_working_copies`, at start and hourly), since only
  one node runs the cleanup.

A shared file is named by its folder and file name (`spool/<job id>.eml`), the same on every
node. A received fax keeps its name when it moves to dead-letter/ (`inbound/<name>`), so the
move needs nothing in the store. A spooled message and its converted PDFs (`<job id>.<n>.pdf`)
are one family: read, written and deleted together.

Why PostgreSQL and not the S3 bucket: in the same transaction as the row there is nothing to
order and nothing to sweep (a bucket would need the object first, then the row, and a sweep for
objects whose row never came); and it measured faster: see docs/benchmarks.md ("Where a shared
store keeps a message before the 250").
Bounded in size by `smtp.max_message_size` and `inbound.max_download_bytes`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.datadir import DataDir
from gateway.fsutil import write_atomic
from gateway.store.db import Database

if TYPE_CHECKING:
    from gateway.config import Config

# The folders whose files rows name; dead-letter/ files are named as inbound/ ones (see above).
FOLDERS = ("spool", "documents", "outbox", "inbound")
_SAME_AS = {"dead-letter": "inbound"}
_MESSAGE = ".eml"

# A file to keep in the store: its path (any node's data.dir) and its bytes.
File = tuple[Path, bytes]


class NotShareable(ValueError):
    """A path outside the folders whose files are shared (a bug, or a tampered row)."""


def shares_files(conn: sqlite3.Connection) -> bool:
    """Whether this connection's store keeps the shared copies (PostgreSQL's does)."""
    return bool(getattr(conn, "shares_files", False))


def name_of(path: Path | str) -> str:
    """The shared name of a data.dir file: `<folder>/<file name>`, the same on every node."""
    path = Path(path)
    folder = _SAME_AS.get(path.parent.name, path.parent.name)
    if folder not in FOLDERS or not path.name or path.name.startswith("."):
        raise NotShareable(f"{path} is not a file the store shares")
    return f"{folder}/{path.name}"


def _family(name: str) -> tuple[str, str] | None:
    """For a spooled message, the prefix its converted PDFs share with it ("spool/<id>.")."""
    if name.startswith("spool/") and name.endswith(_MESSAGE):
        return name[: -len(_MESSAGE)] + ".", name
    return None


# -- statements, inside the caller's transaction ------------------------------------------------


def put(conn: sqlite3.Connection, files: Iterable[File], now: float | None = None) -> None:
    """Keep `files` in the store (replacing a copy of the same name); nothing on SQLite."""
    if not shares_files(conn):
        return
    at = time.time() if now is None else now
    for path, data in files:
        conn.execute(
            "INSERT INTO blobs (name, data, size, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET data = excluded.data, size = excluded.size,"
            " created_at = excluded.created_at",
            (name_of(path), data, len(data), at),
        )


def forget(conn: sqlite3.Connection, paths: Iterable[Path | str | None]) -> None:
    """Delete the shared copies of `paths` (a message with its converted PDFs)."""
    if not shares_files(conn):
        return
    for path in paths:
        if path is None:
            continue
        try:
            name = name_of(path)
        except NotShareable:
            continue  # never put in the store either (a row naming a file elsewhere)
        family = _family(name)
        if family is None:
            conn.execute("DELETE FROM blobs WHERE name = ?", (name,))
        else:
            prefix, _ = family
            conn.execute("DELETE FROM blobs WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))


def read(conn: sqlite3.Connection, path: Path | str) -> list[tuple[str, bytes]]:
    """The shared copy of `path` (with its converted PDFs, for a message), message last."""
    if not shares_files(conn):
        return []
    name = name_of(path)
    family = _family(name)
    if family is None:
        rows = conn.execute("SELECT name, data FROM blobs WHERE name = ?", (name,)).fetchall()
    else:
        prefix, _ = family
        rows = conn.execute(
            "SELECT name, data FROM blobs WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
    found = [(str(row[0]), bytes(row[1])) for row in rows]
    return sorted(found, key=lambda item: item[0] == name)


def held(conn: sqlite3.Connection, path: Path | str) -> bool:
    """Whether the store has a shared copy of `path` (always False on SQLite)."""
    if not shares_files(conn):
        return False
    row = conn.execute("SELECT 1 FROM blobs WHERE name = ?", (name_of(path),)).fetchone()
    return row is not None


def present(conn: sqlite3.Connection, path: Path | str) -> bool:
    """Whether the file a row names can be had: in the store where it keeps the shared
    copies (the truth there), else on this disk."""
    if shares_files(conn):
        return held(conn, path)
    return Path(path).exists()


class Whereabouts(StrEnum):
    """Where the file a row names can be had from this node."""

    LOCAL = "local"  # on this node's disk (on SQLite: the file itself)
    SHARED = "shared"  # only the store's shared copy: this node has no working copy yet
    MISSING = "missing"  # nowhere


def whereabouts(conn: sqlite3.Connection, data_dir: Path, path: Path | str) -> Whereabouts:
    """Where the file at `path` (as a row names it) is, seen from the node whose data.dir is
    `data_dir`: its working copy, the store's copy only, or nowhere. Blocking (a stat)."""
    if local_path(data_dir, Path(path), shares_files(conn)).is_file():
        return Whereabouts.LOCAL
    try:
        return Whereabouts.SHARED if held(conn, path) else Whereabouts.MISSING
    except NotShareable:
        return Whereabouts.MISSING


def names(conn: sqlite3.Connection) -> set[str]:
    """Every shared name (for the working copies' sweep)."""
    if not shares_files(conn):
        return set()
    return {str(row[0]) for row in conn.execute("SELECT name FROM blobs")}


def read_local(paths: Iterable[Path]) -> list[File]:
    """The files at `paths` with, for a spooled message, its converted PDFs: what
    `fax-gateway store export` carries into the store. Missing files are left out. Blocking."""
    found: list[File] = []
    for path in paths:
        family = [path]
        if path.name.endswith(_MESSAGE) and path.parent.name == "spool":
            stem = path.name[: -len(_MESSAGE)]
            family = sorted(path.parent.glob(f"{stem}.*.pdf")) + family
        for member in family:
            try:
                found.append((member, member.read_bytes()))
            except FileNotFoundError:
                continue
    return found


# -- a node's working copies --------------------------------------------------------------------


def local_path(data_dir: Path, path: Path, shared: bool) -> Path:
    """Where a node keeps the file a row names: on SQLite the row's path; on a shared store
    (`shared`) the same folder and name under the node's data.dir (the row may have been
    written by another node, whose data.dir is its own). A path outside the shared folders is
    left as it is, for the callers' own checks to refuse."""
    if not shared:
        return path
    try:
        name_of(path)
    except NotShareable:
        return path
    return DataDir(data_dir).root / path.parent.name / path.name


class SharedFiles:
    """This node's view of the shared files: the local path of each, fetched when missing."""

    def __init__(self, data_dir: Path, db: Database) -> None:
        self.data = DataDir(data_dir)
        self.db = db

    @classmethod
    def of(cls, config: Config, db: Database) -> SharedFiles:
        return cls(config.data.dir, db)

    @property
    def shared(self) -> bool:
        return self.db.shared

    def local(self, path: Path) -> Path:
        """Where this node keeps the file a row names (`local_path`)."""
        return local_path(self.data.root, Path(path), self.shared)

    async def fetch(self, path: Path) -> Path:
        """The local path of `path`, written from the store first if this node lacks it (the
        path may still not exist: the file is gone everywhere)."""
        if not self.shared:
            return Path(path)
        local = await asyncio.to_thread(self.local, path)
        if await asyncio.to_thread(local.exists):
            return local
        copies = await self.db.run(read, local)
        if copies:
            await asyncio.to_thread(_materialise, self.data.root, local, copies)
        return local

    async def share(self, paths: Sequence[Path]) -> list[File]:
        """`paths` with their bytes, for the transaction that makes their row (only when the
        store shares files: on SQLite nothing is read)."""
        if not self.shared:
            return []
        return await asyncio.to_thread(lambda: [(p, p.read_bytes()) for p in paths])


def _materialise(root: Path, local: Path, copies: list[tuple[str, bytes]]) -> None:
    for name, data in copies:
        folder, _, file_name = name.partition("/")
        # The message last (read() orders it so): its presence means its PDFs are there.
        target = local if file_name == local.name else root / folder / file_name
        write_atomic(target, data)


def sweep_working_copies(data_dir: Path, shared: set[str], older_than: float) -> int:
    """Remove this node's copies of files the store no longer holds, last changed before
    `older_than` (a file being written now, before its row is committed, is younger); how
    many were removed. Blocking."""
    data = DataDir(data_dir)
    removed = 0
    for folder in (data.spool, data.documents, data.outbox, data.inbound, data.dead_letter):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith("."):
                continue  # temp files: the spool's own start-up removal handles them
            name = name_of(path)
            family = Path(name).name.split(".")[0]
            if name in shared or (folder == data.spool and f"spool/{family}{_MESSAGE}" in shared):
                continue
            try:
                if not path.is_file() or path.stat().st_mtime >= older_than:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    return removed
