"""Which store a configuration names: SQLite in data.dir (the default) or a PostgreSQL server.

The one place the backend is chosen; everything else takes the `Database` this returns and
calls `open`, `run` and `close` on it whichever it is.
"""

from __future__ import annotations

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.store.db import Database


def create_database(config: Config) -> Database:
    """The store of `config`, not opened yet."""
    store = config.store
    if store.backend == "sqlite":
        return Database(DataDir(config.data.dir).store)
    from gateway.store.postgres import PostgresDatabase  # psycopg only where it is used

    assert store.dsn is not None  # config.StoreConfig requires it for postgresql
    return PostgresDatabase(
        store.dsn.get_secret_value(),
        lease_seconds=store.lease_seconds,
        pool_size=store.pool_size,
        connect_timeout=store.connect_timeout_seconds,
        statement_timeout=store.statement_timeout_seconds,
    )
