"""The queues: [store], where they live (SQLite, or a PostgreSQL server nodes share), and
[queue], the retry policy every stage follows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.config.values import Section


class StoreConfig(Section):
    """Where the queues live: SQLite in data.dir (one node), or a PostgreSQL server that
    several nodes share (docs/cluster.md)."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # postgresql://user:password@host:port/database?sslmode=... (or libpq's key=value form);
    # a secret as a whole, since it may carry the password (also from FAXGW_STORE_DSN).
    dsn: SecretStr | None = None
    # How long a node's claim on a queue item keeps the other nodes off it; a node that died
    # mid-step leaves its items to the others after this long (postgresql only: one SQLite
    # process takes back a dead predecessor's claims at start-up).
    lease_seconds: float = Field(default=60.0, gt=0)
    pool_size: int = Field(default=4, ge=1, le=64)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    statement_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> StoreConfig:
        if self.backend == "postgresql":
            if self.dsn is None or not self.dsn.get_secret_value().strip():
                raise ValueError(
                    'backend "postgresql" needs store.dsn (or FAXGW_STORE_DSN), e.g.'
                    ' "postgresql://fax-gateway@db.example.com/fax-gateway"'
                )
            _check_dsn(self.dsn.get_secret_value())
        return self

    @property
    def dsn_password(self) -> str | None:
        """The password inside the DSN, if it has one (for the log redactor)."""
        if self.dsn is None:
            return None
        from psycopg import conninfo

        try:
            return conninfo.conninfo_to_dict(self.dsn.get_secret_value()).get("password")
        except Exception:
            return None


def _check_dsn(dsn: str) -> None:
    """A DSN libpq can parse; the problem is said without repeating the DSN (its password)."""
    from psycopg import ProgrammingError, conninfo

    if "://" in dsn and not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError("store.dsn must be a postgresql:// URL or libpq key=value pairs")
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError:
        raise ValueError("store.dsn is not a DSN libpq can read") from None


class QueueConfig(Section):
    """Retry policy of every stage, after Postfix: doubling delay, bounded, with a lifetime."""

    min_backoff_seconds: float = Field(default=30.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    lifetime_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    # Pickups that did not finish (crash mid-step) before a job is held for a human.
    max_pickups: int = Field(default=3, ge=1)
    scan_interval_seconds: float = Field(default=30.0, gt=0)
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)
