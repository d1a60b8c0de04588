"""A client's resend of a message already queued is answered 250 and not faxed twice."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email import policy
from email.message import EmailMessage
from typing import Any

from gateway.config import Config
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.jobs import list_jobs
from gateway.store.spool import Spool
from tests import samples

SENDER = "alice@example.com"


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[SmtpServer, Database, Spool]]:
    db = await Database(config.data.dir / "store.db").open()
    spool = Spool(config.data.dir / "spool")
    server = SmtpServer(config, db, spool, lambda: None)
    try:
        await server.start()
        yield server, db, spool
    finally:
        await server.stop()
        await asyncio.to_thread(db.close)


def message(message_id: str = "<scan-0042@copier.example>") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = "12015550123@fax.local"
    mail["Subject"] = "Scan"
    mail["Message-ID"] = message_id
    mail.set_content("Scanned document attached.")
    mail.add_attachment(samples.pdf(1), "application", "pdf", filename="scan.pdf")
    return mail


def send(port: int, mail: EmailMessage, recipients: list[str]) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(mail.as_bytes(policy=policy.SMTP))


async def _send(server: SmtpServer, mail: EmailMessage, *rcpts: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(send, server.port, mail, list(rcpts))


async def test_the_same_message_again_gets_the_first_jobs_id_and_no_second_job(
    make_config: Callable[..., Config],
) -> None:
    """Same sender, Message-ID and recipients within the window: 250 with the first id, one
    job, no second spool file."""
    async with running(make_config()) as (server, db, spool):
        first = await _send(server, message(), "12015550123@fax.local")
        again = await _send(server, message(), "+12015550123@fax.local")
        assert first[0] == again[0] == 250
        assert again[1] == first[1]
        assert len(await db.run(list_jobs)) == 1
        assert len(spool.messages()) == 1


async def test_other_recipients_or_message_ids_are_new_faxes(
    make_config: Callable[..., Config],
) -> None:
    """A different recipient set or Message-ID is another message: its own job."""
    async with running(make_config()) as (server, db, _spool):
        one = await _send(server, message(), "12015550123@fax.local")
        more = await _send(server, message(), "12015550123@fax.local", "12015550124@fax.local")
        other = await _send(server, message("<scan-0043@copier.example>"), "12015550123@fax.local")
        assert len({one[1], more[1], other[1]}) == 3
        assert len(await db.run(list_jobs)) == 3


async def test_the_window_can_be_switched_off(make_config: Callable[..., Config]) -> None:
    """smtp.dedupe_window_seconds = 0: every message is faxed, resends included."""
    override: dict[str, Any] = {"smtp": {"dedupe_window_seconds": 0}}
    async with running(make_config(override)) as (server, db, _spool):
        await _send(server, message(), "12015550123@fax.local")
        await _send(server, message(), "12015550123@fax.local")
        assert len(await db.run(list_jobs)) == 2
