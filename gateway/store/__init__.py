"""The durable store: SQLite in data.dir, behind small repository modules.

`db.Database` owns the one connection and the one thread it is used on; each repository module
(jobs, faxes, events, inbound, outbox, ...) is a set of plain functions taking a sqlite3.Connection,
which the event loop calls through `Database.run` so no SQLite call ever blocks the loop.
"""

from gateway.store.db import Database, transaction

__all__ = ["Database", "transaction"]
