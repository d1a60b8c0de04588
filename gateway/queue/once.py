"""Work that one node of a cluster does for all: the reconciler and the cleaner.

`OnceOnly` wraps such a worker for the `Runner`. Before each round it asks the store whether
this node runs the once-only work (`Database.runs_once_only`: always on SQLite, where there is
one node; on PostgreSQL, while this node holds the advisory lock, see store/cluster.py). A node
that does not passes the round, and asks again at the next scan, so when the holder dies
another node takes the work over within `queue.scan_interval_seconds`.
"""

from __future__ import annotations

from gateway.config import Config
from gateway.queue.runner import QueueWorker
from gateway.store import Database


class OnceOnly:
    """`worker`, on one node at a time."""

    def __init__(self, worker: QueueWorker, db: Database) -> None:
        self.worker = worker
        self.db = db
        self.name = worker.name
        self._ours = False

    @property
    def config(self) -> Config:
        return self.worker.config

    @config.setter
    def config(self, new: Config) -> None:
        # A SIGHUP hands every worker its new configuration (daemon._reconfigure).
        self.worker.config = new

    async def run_once(self) -> int:
        self._ours = await self.db.runs_once_only()
        if not self._ours:
            return 0
        return await self.worker.run_once()

    async def next_due(self) -> float | None:
        # Not ours: no due time, so the runner asks again at its scan, not at once.
        return await self.worker.next_due() if self._ours else None
