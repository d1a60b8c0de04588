"""SMTP acceptance on the PostgreSQL store, one node and two, beside the SQLite store.

The gateway's `SmtpServer` as in the `smtp` benchmark (1-page PDF, workers not running), with
its store on a PostgreSQL server started for the round with fsync and synchronous commit on
(a 250 means committed on the server's disk, as it does with SQLite's synchronous=FULL). One
node: one SmtpServer and its store. Two nodes: two SmtpServers, each with its own store pool
and spool, on the same database, the clients split between them. The baseline is the same
server on SQLite. The server's data directory is a temp dir under $TMPDIR, like the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from gateway.smtp.server import SmtpServer
from gateway.store.backend import create_database
from gateway.store.spool import Spool
from tests.bench.acceptance import CLIENTS, WARM_UP, messages, send_all
from tests.bench.common import Result, bench_config
from tests.servers.postgres import _bin_dir, start_server


async def rate(work: Path, mails: list[bytes], store: dict[str, Any], nodes: int) -> float:
    """Messages a second `nodes` SMTP servers on one store accept, the clients spread evenly."""
    servers = []
    stores = []
    try:
        for node in range(nodes):
            config = bench_config(work / f"node-{node}", {"store": store} if store else {})
            db = await create_database(config).open()
            stores.append(db)
            server = SmtpServer(config, db, Spool(config.data.dir / "spool"), lambda: None)
            await server.start()
            servers.append(server)
        ports = [server.port for server in servers]

        async def everywhere(batch: list[bytes]) -> None:
            per = CLIENTS // nodes or 1
            await asyncio.gather(
                *(send_all(port, batch[i::nodes], per) for i, port in enumerate(ports))
            )

        await everywhere(mails[:WARM_UP])
        timed = mails[WARM_UP:]
        started = time.perf_counter()
        await everywhere(timed)
        elapsed = time.perf_counter() - started
        counted = await stores[0].run(_jobs)
        if (nodes == 1 and counted != len(mails)) or (nodes > 1 and counted < len(mails)):
            raise RuntimeError(f"{len(mails)} messages sent, {counted} jobs in the store")
        return len(timed) / elapsed
    finally:
        for server in servers:
            await server.stop()
        for db in stores:
            await asyncio.to_thread(db.close)


def _jobs(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def title(count: int) -> str:
    return f"SMTP acceptance on PostgreSQL, {count} messages with a 1-page PDF, {CLIENTS} clients"


async def run(work: Path, count: int) -> list[Result]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
    mails = await asyncio.to_thread(messages, count + WARM_UP, 1)
    sqlite = await rate(work / "sqlite", mails, {}, 1)
    server = await asyncio.to_thread(start_server, bin_dir, durable=True)
    try:
        dsn = {"backend": "postgresql", "dsn": server.dsn()}
        one = await rate(work / "pg-1", mails, dsn, 1)
        with contextlib.closing(server.connect()) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        two = await rate(work / "pg-2", mails, dsn, 2)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.stop)
        shutil.rmtree(server.root, ignore_errors=True)
    common = {
        "unit": "msg/s",
        "baseline": sqlite,
        "baseline_name": "the same on SQLite",
        "higher_is_better": True,
    }
    return [
        Result(
            what="SMTP accept, PostgreSQL, one node",
            gateway=one,
            meaning="each 250 costs {ratio}x SQLite's: the commit over the network",
            **common,
        ),
        Result(
            what="SMTP accept, PostgreSQL, two nodes",
            gateway=two,
            meaning="{ratio}x SQLite's cost per 250 with two nodes on one store",
            **common,
        ),
    ]
