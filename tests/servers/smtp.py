"""The `smtp` fixture: the gateway's SmtpServer on port 0 on the test's own loop, with a real
SQLite store and spool on disk; and `certs`, a test CA with a certificate for 127.0.0.1.

`async with smtp(override) as gw:` (or `running_smtp(config)` for a configuration of the test's
own) gives a `Running`: the server's port, its store and spool, the wake() calls it made, and
the jobs and outbox mails the sessions left.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.config import Config
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.spool import Spool


@dataclass
class Running:
    """A started SmtpServer with its store and spool, and the wake() calls it made."""

    server: SmtpServer
    db: Database
    spool: Spool
    config: Config
    woken: list[float] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def jobs(self) -> list[dict[str, Any]]:
        def query(conn: Any) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
            jobs = []
            for row in rows:
                job = dict(row)
                job["recipients"] = [
                    r["recipient"]
                    for r in conn.execute(
                        "SELECT recipient FROM faxes WHERE job_id = ? ORDER BY id", (row["id"],)
                    )
                ]
                jobs.append(job)
            return jobs

        return await self.db.run(query)

    async def outbox(self) -> list[tuple[list[str], EmailMessage]]:
        """The mails queued in the outbox: recipients and the message as it will be sent."""

        def query(conn: Any) -> list[Any]:
            return conn.execute(
                "SELECT recipients, message_path FROM outbox ORDER BY id"
            ).fetchall()

        mails = []
        for recipients, path in await self.db.run(query):
            data = await asyncio.to_thread(Path(path).read_bytes)
            parsed = BytesParser(policy=policy.default).parsebytes(data)
            assert isinstance(parsed, EmailMessage)
            mails.append((json.loads(recipients), parsed))
        return mails


@asynccontextmanager
async def running_smtp(
    config: Config, *, store_dir: Path | None = None, **kwargs: Any
) -> AsyncIterator[Running]:
    """Start the SMTP server of `config` on the current loop; stop it and the store after.
    The store is in data.dir, or in `store_dir` (a test that fills data.dir's disk)."""
    db = await Database((store_dir or config.data.dir) / "store.db").open()
    spool = Spool(config.data.dir / "spool")
    woken: list[float] = []
    server = SmtpServer(config, db, spool, lambda: woken.append(time.time()), **kwargs)
    try:
        await server.start()
        yield Running(server, db, spool, config, woken)
    finally:
        await server.stop()
        await asyncio.to_thread(db.close)


@pytest.fixture
def smtp(make_config: Callable[..., Config]) -> Callable[..., Any]:
    """`async with smtp(override) as gw:` runs a gateway SMTP server for one test."""

    def start(override: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return running_smtp(make_config(override), **kwargs)

    return start


@dataclass
class Certs:
    ca: trustme.CA
    cert: Path
    key: Path
    _client: ssl.SSLContext | None = field(default=None, repr=False)

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting the test CA; one for all sessions, as a client has: each
        new one loads the system's CA bundle (0.03 s, 0.1 s on a loaded machine), which
        for a burst of 100 sessions was most of the test's time."""
        if self._client is None:
            self._client = ssl.create_default_context()
            self.ca.configure_trust(self._client)
        return self._client


@pytest.fixture(scope="session")
def session_ca() -> trustme.CA:
    """One test CA for the session (nothing changes a CA; each test gets its own certificate)."""
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, session_ca: trustme.CA) -> Certs:
    """A test CA and a certificate it issued for localhost and 127.0.0.1 (PEM files)."""
    ca = session_ca
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return Certs(ca, cert, key)
