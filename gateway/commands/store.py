"""`fax-gateway store migrate|export`: the store's schema, and moving a queue to PostgreSQL.

`migrate` brings the configured store (SQLite or PostgreSQL) to this program's schema and says
its version; the daemon does the same at start, so this is for upgrading ahead of a restart
(or of several nodes). `export --to postgresql` copies data.dir's SQLite store into an empty
PostgreSQL store (the DSN from --dsn, $FAXGW_STORE_DSN or store.dsn) while the gateway is
stopped; then set `[store] backend = "postgresql"` and start it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from typing import Any

from gateway.cli import UserError, add_config_argument, config_from_args
from gateway.datadir import DataDir
from gateway.store import Database
from gateway.store.backend import create_database
from gateway.store.db import StoreError
from gateway.store.schema import MIGRATIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "store",
        help="migrate the store, or export a SQLite store to PostgreSQL",
        description="The gateway's store: its schema, and moving it to PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    migrate = actions.add_parser("migrate", help="bring the configured store to this schema")
    add_config_argument(migrate)
    migrate.set_defaults(run=run_migrate)

    export = actions.add_parser(
        "export", help="copy data.dir's SQLite store into an empty PostgreSQL store"
    )
    add_config_argument(export)
    export.add_argument("--to", choices=["postgresql"], required=True, help="the target backend")
    export.add_argument(
        "--dsn",
        help="the PostgreSQL store (default: $FAXGW_STORE_DSN, else store.dsn); a password"
        " is better given in $FAXGW_STORE_DSN than on a command line others can see",
    )
    export.set_defaults(run=run_export)


def run_migrate(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    db = create_database(config)
    where = getattr(db, "where", None) or str(DataDir(config.data.dir).store)
    try:
        db.open_sync()
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise UserError(f"cannot migrate the store at {where}: {exc}") from None
    finally:
        db.close()
    print(f"store at {where} ({config.store.backend}): schema version {len(MIGRATIONS)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    dsn = args.dsn or os.environ.get("FAXGW_STORE_DSN")
    if not dsn and config.store.dsn is not None:
        dsn = config.store.dsn.get_secret_value()
    if not dsn:
        raise UserError("no PostgreSQL store named: give --dsn, $FAXGW_STORE_DSN or store.dsn")
    path = DataDir(config.data.dir).store
    if not path.is_file():
        raise UserError(f"no SQLite store at {path}: is data.dir right?")
    from gateway.store.postgres import PostgresDatabase  # psycopg only where it is used

    source = Database(path)
    target = PostgresDatabase(dsn, connect_timeout=config.store.connect_timeout_seconds)
    try:
        source.open_sync()  # migrated to this schema, like the target
        target.open_sync()
        copied = source.run_sync(_copy_into, target)
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise UserError(f"export to {target.where} failed: {exc}") from None
    finally:
        source.close()
        target.close()
    for table, count in copied.items():
        print(f"{table}: {count} rows")
    print(f'exported {path} to {target.where}; now set [store] backend = "postgresql"')
    return 0


def _copy_into(source: sqlite3.Connection, target: Any) -> dict[str, int]:
    from gateway.store.export import copy_store

    return copy_store(source, target.connection())
