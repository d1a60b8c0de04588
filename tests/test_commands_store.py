"""`fax-gateway store migrate|export` (gateway/commands/store.py), run as real subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.datadir import DataDir
from gateway.fsutil import write_atomic
from gateway.store.db import connect
from gateway.store.events import events_of, record_event
from gateway.store.faxes import faxes_of
from gateway.store.jobs import get_job
from gateway.store.outbox import enqueue, list_messages
from gateway.store.postgres import PostgresDatabase
from gateway.store.schema import MIGRATIONS
from gateway.store.spool import Spool
from tests.conftest import cli_env, run_cli
from tests.servers.postgres import PostgresServer
from tests.store_rows import T0, make_job, submit, to_uploaded

pytestmark = pytest.mark.slow  # subprocesses


def _sqlite_store(data_dir: Path) -> tuple[str, int]:
    """A SQLite store with a submitted job, an event and a mail; the job id and fax id."""
    conn = connect(data_dir / "store.db")
    try:
        job_id = make_job(conn)
        to_uploaded(conn, job_id)
        fax_id = faxes_of(conn, job_id)[0].id
        submit(conn, fax_id, "carrier-1")
        record_event(conn, "carrier-1", "delivered", "outbound", {"id": "carrier-1"}, T0 + 5)
        enqueue(conn, key="report:1:delivered", kind="delivered", recipients=["a@example.com"],
                message_path=data_dir / "outbox" / "a.eml", now=T0 + 6)  # fmt: skip
    finally:
        conn.close()
    return job_id, fax_id


def test_export_copies_every_row_and_new_ids_follow(
    config_data: dict[str, Any],
    write_config: Any,
    postgres_server: PostgresServer,
    postgres_schema: str,
) -> None:
    """Jobs, faxes, events and mails arrive in PostgreSQL as they were, ids included; the next
    row there gets the next id; the password never shows in the output."""
    data_dir = Path(config_data["data"]["dir"])
    data_dir.mkdir(parents=True)
    job_id, fax_id = _sqlite_store(data_dir)
    dsn = postgres_server.dsn(postgres_schema)
    path = write_config(config_data)
    env = cli_env(FAXGW_STORE_DSN=dsn)
    result = run_cli("store", "export", "--to", "postgresql", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "jobs: 1 rows" in result.stdout and "faxes: 3 rows" in result.stdout
    assert postgres_server.password not in result.stdout + result.stderr

    db = PostgresDatabase(dsn).open_sync()
    try:
        conn = db.connection()
        job = get_job(conn, job_id)
        assert job is not None and job.document_url == f"https://s3.example/{job_id}.pdf"
        faxes = faxes_of(conn, job_id)
        assert [f.carrier_id for f in faxes if f.id == fax_id] == ["carrier-1"]
        assert [e.status for e in events_of(conn, "carrier-1")] == ["delivered"]
        assert enqueue(
            conn,
            key="report:2:delivered",
            kind="delivered",
            recipients=["b@example.com"],
            message_path=data_dir / "b.eml",
            now=T0,
        )
        assert [m.id for m in list_messages(conn)] == [1, 2]
    finally:
        db.close()

    again = run_cli("store", "export", "--to", "postgresql", "--config", str(path), env=env)
    assert again.returncode == 2
    assert "not empty" in again.stderr


def test_migrate_brings_the_configured_postgresql_store_to_this_schema(
    config_data: dict[str, Any],
    write_config: Any,
    postgres_server: PostgresServer,
    postgres_schema: str,
) -> None:
    """`store migrate` on an empty PostgreSQL schema creates the tables and says the version."""
    config_data["store"] = {"backend": "postgresql"}
    path = write_config(config_data)
    env = cli_env(FAXGW_STORE_DSN=postgres_server.dsn(postgres_schema))
    result = run_cli("store", "migrate", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert f"schema version {len(MIGRATIONS)}" in result.stdout
    assert postgres_server.password not in result.stdout + result.stderr
    with postgres_server.connect(postgres_schema) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (postgres_schema,),
        )}  # fmt: skip
    assert {"jobs", "faxes", "events", "inbound", "outbox", "meta", "schema_version"} <= tables


def test_export_carries_the_files_of_unfinished_work_into_the_store(
    config_data: dict[str, Any],
    write_config: Any,
    postgres_server: PostgresServer,
    postgres_schema: str,
) -> None:
    """A queued job's message and converted PDF and a pending mail's file become shared copies;
    a file no row names stays behind."""
    data = DataDir(Path(config_data["data"]["dir"]))
    spool = Spool(data.spool)
    conn = connect(data.store)
    try:
        job_id = make_job(conn)
        conn.execute("UPDATE jobs SET spool_path = ?", (str(spool.path_for(job_id)),))
        enqueue(conn, key="report:1:delivered", kind="delivered", recipients=["a@example.com"],
                message_path=data.outbox / "a.eml", now=T0)  # fmt: skip
    finally:
        conn.close()
    spool.write(job_id, b"Subject: x\r\n\r\nmessage")
    spool.write_converted(job_id, 0, b"%PDF converted")
    write_atomic(data.outbox / "a.eml", b"Subject: report\r\n\r\n")
    write_atomic(data.outbox / "stray.eml", b"nobody's")
    env = cli_env(FAXGW_STORE_DSN=postgres_server.dsn(postgres_schema))
    path = write_config(config_data)
    result = run_cli("store", "export", "--to", "postgresql", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "blobs: 3 rows" in result.stdout
    with postgres_server.connect(postgres_schema) as pg:
        rows = pg.execute("SELECT name, data FROM blobs ORDER BY name").fetchall()
    assert rows == [
        ("outbox/a.eml", b"Subject: report\r\n\r\n"),
        (f"spool/{job_id}.0.pdf", b"%PDF converted"),
        (f"spool/{job_id}.eml", b"Subject: x\r\n\r\nmessage"),
    ]
