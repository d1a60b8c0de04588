"""SMTP acceptance and webhooks on the PostgreSQL store, one node and two, beside SQLite.

The gateway's `SmtpServer` as in the `smtp` benchmark (1-page PDF, workers not running), with
its store on a PostgreSQL server started for the round with fsync and synchronous commit on
(a 250 means committed on the server's disk, as it does with SQLite's synchronous=FULL). One
node: one SmtpServer and its store. Two nodes: two SmtpServers, each with its own store pool
and spool, on the same database, the clients split between them. The baseline is the same
server on SQLite. Webhooks: the gateway's webhook endpoint (token, shape, the events row, then
200) on its HTTP server, each POST a new (fax, status), from 8 concurrent clients. The
server's data directory is a temp dir under $TMPDIR, like the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.callbacks.webhook import add_routes as add_webhook_routes
from gateway.config import Address
from gateway.ops.httpd import HttpServer, create_app
from gateway.smtp.server import SmtpServer
from gateway.store.backend import create_database
from gateway.store.spool import Spool
from tests.bench.acceptance import CLIENTS, WARM_UP, messages, send_all
from tests.bench.common import Result, bench_config
from tests.conftest import BASE_CONFIG
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


WEBHOOK_CLIENTS = 8


async def webhook_rate(work: Path, count: int, store: dict[str, Any], nodes: int) -> float:
    """Webhooks a second `nodes` endpoints on one store answer 200 (each stored first)."""
    servers: list[HttpServer] = []
    stores = []
    try:
        for node in range(nodes):
            config = bench_config(work / f"hooks-{node}", {"store": store} if store else {})
            db = await create_database(config).open()
            stores.append(db)
            app = create_app()
            add_webhook_routes(app, config=config, db=db, wake=lambda: None)
            server = HttpServer(app, Address("127.0.0.1", 0))
            await server.start()
            servers.append(server)
        token = BASE_CONFIG["http"]["webhook_token"]
        urls = [f"http://127.0.0.1:{s.port}/webhooks/fax/{token}" for s in servers]
        async with aiohttp.ClientSession() as session:

            async def post(numbers: range) -> None:
                for n in numbers:
                    payload = {**_WEBHOOK, "id": f"bench-{n:08d}"}
                    async with session.post(urls[n % nodes], json=payload) as response:
                        if response.status != 200:
                            raise RuntimeError(f"webhook answered {response.status}")

            await post(range(-WARM_UP, 0))
            started = time.perf_counter()
            await asyncio.gather(
                *(post(range(i, count, WEBHOOK_CLIENTS)) for i in range(WEBHOOK_CLIENTS))
            )
            return count / (time.perf_counter() - started)
    finally:
        for server in servers:
            await server.stop()
        for db in stores:
            await asyncio.to_thread(db.close)


_WEBHOOK: dict[str, Any] = {
    "type": "fax",
    "direction": "outbound",
    "to": "15556667777",
    "from": "15556668888",
    "status": "delivered",
    "time": "2024-06-19T15:38:17.140Z",
    "pages": "3",
}


def _jobs(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def title(count: int) -> str:
    return (
        f"The PostgreSQL store: {count} messages with a 1-page PDF ({CLIENTS} clients),"
        f" {count} webhooks ({WEBHOOK_CLIENTS} clients)"
    )


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
        hooks_sqlite = await webhook_rate(work / "sqlite", count, {}, 1)
        hooks_one = await webhook_rate(work / "pg-1", count, dsn, 1)
        with contextlib.closing(server.connect()) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        hooks_two = await webhook_rate(work / "pg-2", count, dsn, 2)
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
        Result(
            what="webhook stored, PostgreSQL, one node",
            unit="hooks/s",
            gateway=hooks_one,
            baseline=hooks_sqlite,
            baseline_name="the same on SQLite",
            higher_is_better=True,
            meaning="each 200 costs {ratio}x SQLite's",
        ),
        Result(
            what="webhook stored, PostgreSQL, two nodes",
            unit="hooks/s",
            gateway=hooks_two,
            baseline=hooks_sqlite,
            baseline_name="the same on SQLite",
            higher_is_better=True,
            meaning="{ratio}x SQLite's cost per 200 with two nodes on one store",
        ),
    ]
