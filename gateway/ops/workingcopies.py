"""Each node's sweep of its working copies, where nodes share the store (and its files).

On a shared store (PostgreSQL) the files rows name are in the store, and each node keeps the
copies it wrote or fetched in its own data.dir (gateway/store/blobs.py). The store's copy goes
with the row's last need of it, on whichever node did that step (the cleanup runs on one node
at a time); the other nodes' copies of it then belong to nobody. Every node removes its own,
once an hour and at start: a local file older than an hour whose shared copy is gone. An hour,
so that a file written just before its row's commit (a message being accepted) is never taken
for one. With SQLite this worker does not run: the files are the truth there, and the daily
purge's sweep (gateway/ops/retention.py) covers the files no row names.
"""

from __future__ import annotations

import asyncio
import time

from gateway import log
from gateway.config import Config
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import Clock
from gateway.store import Database, blobs

logger = log.get_logger(__name__)

# How often a node sweeps, and how old a file must be to be swept.
INTERVAL_SECONDS = 3600.0
MIN_AGE_SECONDS = 3600.0


async def sweep(config: Config, db: Database, now: float) -> int:
    """Remove this node's working copies whose shared copy is gone; how many."""
    shared = await db.run(blobs.names)
    removed = await asyncio.to_thread(
        blobs.sweep_working_copies, config.data.dir, shared, now - MIN_AGE_SECONDS
    )
    if removed:
        logger.info("files.working_copies_removed", count=removed)
    return removed


class WorkingCopiesWorker(QueueWorker):
    name = "working-copies"

    def __init__(self, *, config: Config, db: Database, clock: Clock = time.time) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self._due = 0.0

    async def next_due(self) -> float | None:
        return self._due

    async def run_once(self) -> int:
        now = self.clock()
        if now < self._due:
            return 0
        self._due = now + INTERVAL_SECONDS
        return await sweep(self.config, self.db, now)
