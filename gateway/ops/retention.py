"""Retention: what is finished and older than data.retention_days goes, once a day.

`purge` is the one way it is done, by the daily `RetentionWorker` and by hand (`fax-gateway
queue purge --older-than 7d [--dry-run]`):

1. finished rows last changed before the cutoff, and the files they named
   (gateway/store/retention.py says which rows);
2. files under spool/, documents/, inbound/, dead-letter/ and outbox/ older than the cutoff
   that no row names any more (left by a crash between a commit and a removal); never one
   younger than an hour, which may be a message whose row is about to be committed;
3. archived inbound faxes older than inbound.archive_retention_days (gateway/inbound/archive.py).

Each run logs one `retention.purged` line with the counts and adds them to
`faxgw_retention_purged_total`. The worker remembers its last run in the store's meta table,
so a restart neither repeats it nor skips a day.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.inbound.archive import Archive
from gateway.ops.metrics import Metrics
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import Clock
from gateway.store import Database
from gateway.store.blobs import SharedFiles
from gateway.store.meta import get_meta, set_meta
from gateway.store.retention import KINDS, purge_rows, referenced_among
from gateway.store.spool import Spool

logger = log.get_logger(__name__)

DAY = 86400.0
LAST_RUN = "retention.last_run"
# A file younger than this is never swept, whatever the cutoff: it may be a spooled message
# whose job row is being committed right now.
SWEEP_MIN_AGE = 3600.0


async def purge(
    db: Database,
    config: Config,
    *,
    older_than: float | None,
    now: float,
    dry_run: bool = False,
    archive: Archive | None = None,
) -> dict[str, int]:
    """Purge what is finished and older than `older_than` seconds (None: keep the rows and
    files; the archive has its own retention). Counts by kind (store/retention.KINDS)."""
    counts = dict.fromkeys(KINDS, 0)
    if older_than is not None:
        cutoff = now - older_than
        purged = await db.run(purge_rows, cutoff, dry_run=dry_run)
        counts.update(purged.counts)
        data = DataDir(config.data.dir)
        # This node's copies of what rows name (another node's path, on a shared store).
        files = SharedFiles.of(config, db)
        purged.files = await asyncio.to_thread(lambda: [files.local(p) for p in purged.files])
        removed = await asyncio.to_thread(_remove, data, purged.files, dry_run)
        older = min(cutoff, now - SWEEP_MIN_AGE)
        stale = await asyncio.to_thread(_stale, data, older)
        asked = set(stale) | {m for p in stale if (m := Spool.message_of(p)) is not None}
        kept = await db.run(referenced_among, asked, files.local)
        swept = await asyncio.to_thread(_sweep, data, stale, kept | set(purged.files), dry_run)
        counts["files"] = removed + swept
    days = config.inbound.archive_retention_days
    if days is not None and Archive.wanted(config.inbound):
        counts["archived"] = await (archive or Archive()).purge(
            config.inbound, now - days * DAY, dry_run=dry_run
        )
    return counts


def _inside(data: DataDir, path: Path) -> bool:
    return path.is_absolute() and data.root.resolve() in path.resolve().parents


def _remove(data: DataDir, paths: Iterable[Path], dry_run: bool) -> int:
    """Remove the files purged rows named (only inside data.dir); how many there were."""
    removed = 0
    for path in paths:
        if not _inside(data, path) or not path.is_file():
            continue
        removed += 1
        if not dry_run:
            path.unlink(missing_ok=True)
    return removed


def _stale(data: DataDir, older_than: float) -> list[Path]:
    """The files in the gateway's own folders last changed before `older_than`."""
    found = []
    for folder in (data.spool, data.documents, data.inbound, data.dead_letter, data.outbox):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < older_than:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def _sweep(data: DataDir, stale: list[Path], kept: set[Path], dry_run: bool) -> int:
    """Remove the `stale` files no row names (not in `kept`). A spooled message's converted
    attachments (Spool.write_converted) go with it, not before."""
    swept = 0
    for path in stale:
        if path in kept or (path.parent == data.spool and Spool.message_of(path) in kept):
            continue
        swept += 1
        if not dry_run:
            path.unlink(missing_ok=True)
    return swept


class RetentionWorker(QueueWorker):
    """Runs `purge` once a day (a once-only task: one process should run it at a time)."""

    name = "retention"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        archive: Archive | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.archive = archive
        self.metrics = metrics

    def _enabled(self) -> bool:
        inbound = self.config.inbound
        archive_purged = inbound.archive_retention_days is not None and Archive.wanted(inbound)
        return self.config.data.retention_days > 0 or archive_purged

    async def next_due(self) -> float | None:
        if not self._enabled():
            return None
        last = await self.db.run(get_meta, LAST_RUN)
        return 0.0 if last is None else float(last) + DAY

    async def run_once(self) -> int:
        due = await self.next_due()
        now = self.clock()
        if due is None or due > now:
            return 0
        days = self.config.data.retention_days
        counts = await purge(
            self.db,
            self.config,
            older_than=days * DAY if days > 0 else None,
            now=now,
            archive=self.archive,
        )
        await self.db.run(set_meta, LAST_RUN, repr(now))
        logger.info("retention.purged", retention_days=days, **counts)
        if self.metrics is not None:
            for kind, count in counts.items():
                if count:
                    self.metrics.retention_purged.labels(kind=kind).inc(count)
        return 1
