"""Which store a configuration names: SQLite in data.dir (the default) or a PostgreSQL server.

The one place the backend is chosen; everything else takes the `Database` this returns and
calls `open`, `run` and `close` on it whichever it is. `cluster_problems` says what a
configuration sharing its store with other nodes cannot do (check-config refuses it; serve
warns at every start).
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


def cluster_problems(config: Config) -> list[str]:
    """What nodes sharing a store cannot do, one line each."""
    if config.store.backend == "postgresql" and config.storage.backend == "local":
        # Decided: refused rather than served from the store's copy on a miss. The carrier's
        # GET reaches whichever node nginx picks, and media/ is one node's disk; the bucket
        # every node shares is what a cluster has anyway (docs/cluster.md).
        return [
            'store.backend = "postgresql" with storage.backend = "local": local storage'
            " serves the carrier's documents from one node's media/ folder, and the carrier's"
            ' request may reach another node; use storage.backend = "s3" with one bucket for'
            " every node sharing the store"
        ]
    return []
