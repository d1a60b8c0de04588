"""The daily limit under concurrency (gateway/smtp/limits.py): real SMTP sessions (aiosmtplib)
against a real SmtpServer on port 0; each fax within the limit passes, none past it does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosmtplib
import pytest

from gateway.config import Config
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.spool import Spool
from tests import samples
from tests.helpers import until
from tests.servers.postgres import StoreBackend

SENDER = "alice@example.com"


def _mail() -> bytes:
    return samples.mail(samples.attachment(samples.pdf(1), "report.pdf"))


async def _faxes(db: Database) -> int:
    def count(conn: Any) -> int:
        return int(conn.execute("SELECT count(*) FROM faxes").fetchone()[0])

    return await db.run(count)


@asynccontextmanager
async def _server(config: Config, db: Database) -> AsyncIterator[SmtpServer]:
    server = SmtpServer(config, db, Spool(config.data.dir / "spool"), lambda: None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _session(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname="client.example", timeout=30
    )
    await client.connect()
    await client.ehlo()
    await client.mail(SENDER)
    return client


async def _rcpt(client: aiosmtplib.SMTP, number: str) -> int:
    try:
        return (await client.rcpt(f"{number}@fax.local")).code
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code


async def test_a_job_committed_while_the_count_is_read_is_counted_once(
    smtp: Callable[..., Any],
) -> None:
    """A job whose commit lands while another session's count waits for the reader is counted
    once, not from the store and from memory both: the last fax within the limit passes."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 2}}) as gw:
        first = await _session(gw.port)
        second = await _session(gw.port)
        assert await _rcpt(first, "12015550130") == 250
        reading, release = threading.Event(), threading.Event()

        def read(_conn: Any) -> bool:
            reading.set()
            return release.wait(60)

        # The reader is busy: the second session's count waits behind this read.
        busy = asyncio.create_task(gw.db.read(read))
        try:
            assert await asyncio.to_thread(reading.wait, 10)
            lock = gw.server.handler.daily_limit.lock
            pending = asyncio.create_task(_rcpt(second, "12015550131"))

            async def counting() -> bool:
                return lock.locked()

            await until(counting, 30)
            # The first session's job is committed meanwhile (the writer is free); its
            # transaction stays open until the count lets go of the lock.
            data = asyncio.create_task(first.data(_mail()))

            async def committed() -> bool:
                return await _faxes(gw.db) == 1

            await until(committed, 30)
            release.set()
            assert await pending == 250
            assert (await data).code == 250
            assert (await second.data(_mail())).code == 250
            assert await _faxes(gw.db) == 2
        finally:
            release.set()
            await busy
            for client in (first, second):
                client.close()


@pytest.mark.slow
async def test_a_flood_of_sessions_at_the_limit_lets_exactly_the_limit_through(
    make_config: Callable[..., Config], store_backend: StoreBackend
) -> None:
    """Rounds of parallel sessions, each faxing one number as soon as it may, never get more
    than the limit's faxes through, nor fewer, on either store."""
    limit = 5
    config = make_config(
        {
            "limits": {"faxes_per_sender_per_day": limit},
            # All 8 sessions come from 127.0.0.1: each may have its message checked at once.
            "smtp": {"max_concurrent_data": 8, "max_concurrent_data_per_ip": 8},
        }
    )
    db = await store_backend.open(config)
    numbers = iter(range(12015550200, 12015550300))

    async def one(port: int) -> bool:
        client = await _session(port)
        try:
            if await _rcpt(client, str(next(numbers))) != 250:
                return False
            return (await client.data(_mail())).code == 250
        finally:
            client.close()

    async with _server(config, db) as server:
        accepted = 0
        # No bound on the rounds' wall-clock time: each takes 4 s here unloaded, and a loaded
        # machine may take any multiple of that; each session's own waits are bounded (30 s).
        for _round in range(4):
            outcomes = await asyncio.gather(*(one(server.port) for _ in range(8)))
            accepted += sum(outcomes)
        assert accepted == limit
        assert await _faxes(db) == limit
