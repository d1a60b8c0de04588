"""SMTP acceptance: messages a second the gateway's SMTP server answers 250, over real SMTP.

The gateway's `SmtpServer` (real store and spool in a temp dir, workers not running, `wake` a
no-op) against a bare aiosmtpd server on the same loop whose handler only says 250: no MIME
parsing, no page count, no fsync, no store. The difference is the cost of durability (spool
fsync, store commit before the 250) and validation (relay policy, number, document).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.spool import Spool
from tests import samples
from tests.bench.common import Result, bench_config

SENDER = "alice@example.com"
RECIPIENT = "12015550123@fax.local"
CLIENTS = 4
WARM_UP = 8  # messages per server before timing: first connections, imports, caches


class _Bare250:
    """The baseline's handler: every message is "accepted" and thrown away."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def messages(count: int, pages: int) -> list[bytes]:
    """`count` distinct mails (own Message-IDs), each with one `pages`-page PDF."""
    document = samples.pdf(pages)
    return [
        samples.mail(samples.attachment(document, f"report-{n}.pdf"), subject=f"Fax {n}")
        for n in range(count)
    ]


async def send_all(port: int, mails: list[bytes], clients: int = CLIENTS) -> None:
    """Send `mails` over `clients` concurrent connections, each sending its share in turn.

    Raises if any message is not accepted: a refused message would flatter the figure.
    """

    async def client(share: list[bytes]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await smtp.connect()
        try:
            for raw in share:
                # A refused DATA raises (SMTPDataError); a refused recipient is listed.
                refused, _reply = await smtp.sendmail(SENDER, [RECIPIENT], raw)
                if refused:
                    raise RuntimeError(f"recipient refused: {refused}")
        finally:
            await smtp.quit()

    await asyncio.gather(*(client(mails[i::clients]) for i in range(clients) if mails[i::clients]))


async def _rate(port: int, mails: list[bytes]) -> float:
    await send_all(port, mails[:WARM_UP])
    timed = mails[WARM_UP:]
    started = time.perf_counter()
    await send_all(port, timed)
    return len(timed) / (time.perf_counter() - started)


async def gateway_rate(data_dir: Path, mails: list[bytes]) -> float:
    """Messages a second the gateway's SMTP server accepts (250 after fsync and commit)."""
    config = bench_config(data_dir, {"smtp": {"listen": "127.0.0.1:0"}})
    db = await Database(config.data.dir / "store.db").open()
    server = SmtpServer(config, db, Spool(config.data.dir / "spool"), lambda: None)
    try:
        await server.start()
        rate = await _rate(server.port, mails)
        accepted = await db.run(lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone())
        if accepted[0] != len(mails):
            raise RuntimeError(f"{len(mails)} messages sent, {accepted[0]} jobs in the store")
        return rate
    finally:
        await server.stop()
        await asyncio.to_thread(db.close)


async def baseline_rate(mails: list[bytes]) -> float:
    """Messages a second a bare aiosmtpd server answers 250 to, on the same loop."""
    loop = asyncio.get_running_loop()
    handler = _Bare250()

    def make() -> SMTP:
        # The same protocol settings as the gateway's listener, so only the handler differs.
        return SMTP(
            handler,
            data_size_limit=25 * 1024 * 1024,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="bench.local",
            loop=loop,
        )

    server = await loop.create_server(make, "127.0.0.1", 0)
    try:
        return await _rate(server.sockets[0].getsockname()[1], mails)
    finally:
        server.close()
        await server.wait_closed()


def title(count: int, pages: int) -> str:
    return f"SMTP acceptance, {count} messages with a {pages}-page PDF, {CLIENTS} clients"


async def run(work: Path, count: int, pages: int) -> list[Result]:
    mails = await asyncio.to_thread(messages, count + WARM_UP, pages)
    gateway = await gateway_rate(work / f"smtp-{pages}", mails)
    baseline = await baseline_rate(mails)
    return [
        Result(
            what=f"SMTP accept, {pages}-page PDF",
            unit="msg/s",
            gateway=gateway,
            baseline=baseline,
            baseline_name="bare aiosmtpd answering 250",
            higher_is_better=True,
            meaning="each 250 costs {ratio}x a bare one: policy, MIME parse and page "
            "count, spool fsync and store commit",
        )
    ]
