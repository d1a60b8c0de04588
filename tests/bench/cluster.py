"""SMTP acceptance and webhooks on the PostgreSQL store, one node and two, beside SQLite.

The gateway's `SmtpServer` as in the `smtp` benchmark (1-page PDF, workers not running), with
its store on a PostgreSQL server started for the round with fsync and synchronous commit on
(a 250 means committed on the server's disk, as it does with SQLite's synchronous=FULL). One
node: one SmtpServer and its store. Two nodes: two SmtpServers, each with its own store pool
and spool, on the same database, the clients split between them. The baseline is the same
server on SQLite. Webhooks: the gateway's webhook endpoint (token, shape, the events row, then
200) on its HTTP server, each POST a new (fax, status), from 8 concurrent clients. Claims:
the outbox's claim (store/claims.py, a lease so nothing is taken twice) followed by its outcome
(`mark_sent`), from 4 concurrent claimers per node, as the submit worker's POST slots claim;
on PostgreSQL with FOR UPDATE SKIP LOCKED, no store-wide lock (what the gateway does), beside
the same claims taking the store's write lock as every other transaction does (what it did
before), and beside SQLite. The server's data directory is a temp dir under $TMPDIR, like the
work dir.
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
from gateway.store.claims import claim
from gateway.store.db import Database, transaction
from gateway.store.outbox import OUTBOX, OutboxState, enqueue, mark_sent
from gateway.store.postgres import PostgresDatabase
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


CLAIMERS = 4


def _fill(conn: Any, count: int) -> None:
    for n in range(count):
        enqueue(conn, key=f"bench:{n}", kind="delivered", recipients=["a@example.com"],
                message_path=Path(f"/outbox/{n}.eml"), now=time.time() - 1)  # fmt: skip


def _claim_one(conn: Any, owner: str, row_locks: bool) -> int:
    """One claim of the next due mail and its outcome; 1, or 0 when none was left."""
    now = time.time()
    with transaction(conn, row_locks=row_locks):
        found = claim(
            conn, OUTBOX, where="state = ?", params=(OutboxState.PENDING,), now=now, limit=1,
            max_pickups=3, lease=lambda _pickups: 600.0, count_attempt=True, owner=owner,
        )  # fmt: skip
    for row in found.rows:
        mark_sent(conn, row["id"], now)
    return len(found.rows)


def _sent(conn: Any) -> tuple[int, int]:
    row = conn.execute("SELECT count(*), max(attempts) FROM outbox WHERE state = 'sent'")
    count, attempts = row.fetchone()
    return int(count), int(attempts or 0)


async def claim_rate(
    work: Path, count: int, dsn: str | None, nodes: int, row_locks: bool = True
) -> float:
    """Claims (each with its outcome) a second `nodes` nodes make on one store, CLAIMERS each."""
    stores: list[Database] = []
    try:
        for _node in range(nodes):
            if dsn is None:
                stores.append(await Database(work / "claims.db").open())
            else:
                stores.append(await PostgresDatabase(dsn, pool_size=CLAIMERS).open())
        await stores[0].run(_fill, count + WARM_UP)
        for _ in range(WARM_UP):
            await stores[0].run(_claim_one, "node-0", row_locks)

        async def claimer(db: Database, owner: str) -> None:
            while await db.run(_claim_one, owner, row_locks):
                pass

        started = time.perf_counter()
        await asyncio.gather(
            *(claimer(db, f"node-{n}") for n, db in enumerate(stores) for _ in range(CLAIMERS))
        )
        elapsed = time.perf_counter() - started
        sent, attempts = await stores[0].run(_sent)
        if sent != count + WARM_UP or attempts != 1:
            raise RuntimeError(f"{count + WARM_UP} mails, {sent} sent, a claim made {attempts}")
        return count / elapsed
    finally:
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
        f" {count} webhooks ({WEBHOOK_CLIENTS} clients), {2 * count} claims ({CLAIMERS} claimers"
        " a node)"
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
        claims_sqlite = await claim_rate(work / "claims-sqlite", 2 * count, None, 1)
        claims: dict[tuple[int, bool], float] = {}
        for nodes in (1, 2):
            for row_locks in (True, False):
                schema = f"claims_{nodes}_{'rows' if row_locks else 'store'}"
                with contextlib.closing(server.connect()) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")
                claims[nodes, row_locks] = await claim_rate(
                    work, 2 * count, server.dsn(schema), nodes, row_locks
                )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.stop)
        shutil.rmtree(server.root, ignore_errors=True)
    sqlite_same, store_lock = "the same on SQLite", "the same under the store-wide lock"

    def row(what: str, unit: str, figures: tuple[float, float], name: str, meaning: str) -> Result:
        gateway, baseline = figures
        return Result(
            what=what,
            unit=unit,
            gateway=gateway,
            baseline=baseline,
            baseline_name=name,
            higher_is_better=True,
            meaning=meaning,
        )

    return [
        row(
            "SMTP accept, PostgreSQL, one node", "msg/s", (one, sqlite), sqlite_same,
            "each 250 costs {ratio}x SQLite's: the commit over the network",
        ),
        row(
            "SMTP accept, PostgreSQL, two nodes", "msg/s", (two, sqlite), sqlite_same,
            "{ratio}x SQLite's cost per 250 with two nodes on one store",
        ),
        row(
            "webhook stored, PostgreSQL, one node", "hooks/s", (hooks_one, hooks_sqlite),
            sqlite_same, "each 200 costs {ratio}x SQLite's",
        ),
        row(
            "webhook stored, PostgreSQL, two nodes", "hooks/s", (hooks_two, hooks_sqlite),
            sqlite_same, "{ratio}x SQLite's cost per 200 with two nodes on one store",
        ),
        *(
            row(
                f"claims + outcome, PostgreSQL, {name}", "claims/s",
                (claims[nodes, True], claims[nodes, False]), store_lock,
                "SKIP LOCKED: each claim costs {ratio}x the serialised one",
            )
            for nodes, name in ((1, "one node"), (2, "two nodes"))
        ),
        row(
            "claims + outcome, PostgreSQL, two nodes (SQLite: one)", "claims/s",
            (claims[2, True], claims_sqlite), "one node on SQLite",
            "two nodes on PostgreSQL: {ratio}x SQLite's cost per claim",
        ),
    ]  # fmt: skip
