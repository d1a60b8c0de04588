"""A PostgreSQL store that goes away under a running gateway, and comes back.

The gateway runs on a PostgreSQL server of its own (this test stops it, so not the session's).
While it is down nothing is answered as if it were stored: SMTP says 451 4.3.0 (the client keeps
the message), a webhook gets 500 (the carrier retries), /readyz names the store. When it is back
the same process takes mail again and finishes the work, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway.ops.health import DEFAULT_CACHE_SECONDS, DEFAULT_TIMEOUT_SECONDS
from gateway.store import jobs
from gateway.store.records import JobState
from tests import samples
from tests.helpers import until
from tests.servers.gateway import GatewayFactory
from tests.servers.postgres import PostgresServer, _bin_dir, start_server
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

pytestmark = pytest.mark.slow

WEBHOOK: dict[str, Any] = {
    "type": "fax",
    "id": "4f778644-6e11-48f2-99eb-a32e4e1a5748",
    "direction": "outbound",
    "to": "15556667777",
    "from": "15556668888",
    "status": "delivered",
    "time": "2024-06-19T15:38:17.140Z",
    "pages": "3",
}


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test alone (it is stopped and started again)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (install the Debian package postgresql)")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def store_on(server: PostgresServer) -> dict[str, Any]:
    """The [store] section of a gateway on `server`, with timeouts short enough for an outage
    to show within seconds."""
    return {
        "backend": "postgresql",
        "dsn": server.dsn(),
        "connect_timeout_seconds": 2,
        "statement_timeout_seconds": 5,
    }


def fax_mail(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "12015550123@fax.local"
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject}@example.com>"
    message.set_content("Please see the attached document.")
    message.add_attachment(samples.pdf(1), "application", "pdf", filename="a.pdf")
    return message


def smtp_reply(port: int, message: EmailMessage) -> tuple[int, str]:
    """Send one message; the reply to its DATA (or to whatever refused it before)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        try:
            client.send_message(message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as exc:
            [(code, text)] = exc.recipients.values()
            return code, text.decode()
        return 250, "queued"


async def http(method: str, url: str, payload: Any = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=payload) as response,
    ):
        return response.status, await response.text()


async def test_store_down_is_451_and_500_and_named_then_work_resumes(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    own_postgres: PostgresServer,
) -> None:
    """With PostgreSQL stopped: SMTP 451 4.3.0, webhook 500, /readyz 503 naming the store; once
    it is started again the same process accepts mail and the fax is delivered and reported."""
    overrides = {"store": store_on(own_postgres)}
    async with gateway(overrides) as gw:
        base = gw.config.http.public_url
        hook = f"{base}/webhooks/fax/{gw.config.http.webhook_token.get_secret_value()}"
        await asyncio.to_thread(own_postgres.stop)
        started = time.monotonic()
        code, text = await asyncio.to_thread(smtp_reply, gw.smtp.port, fax_mail("down"))
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        assert time.monotonic() - started < 30
        status, _ = await http("POST", hook, WEBHOOK)
        assert status == 500
        status, body = await http("GET", f"{base}/readyz")
        assert status == 503
        assert json.loads(body)["checks"]["store"] != "ok"

        await asyncio.to_thread(own_postgres.start)

        async def accepted() -> bool:
            code, _ = await asyncio.to_thread(smtp_reply, gw.smtp.port, fax_mail("back"))
            return code == 250

        await until(accepted, 30)
        status, _ = await http("POST", hook, WEBHOOK)
        assert status == 200
        [report] = await relay_server.wait_for(1, timeout=60)
        assert "delivered" in str(report.message["Subject"])
        done = [j for j in await gw.db.run(jobs.list_jobs, None, 10) if j.state == JobState.DONE]
        assert len(done) == 1

        async def store_ready() -> bool:
            _status, body = await http("GET", f"{base}/readyz")
            return json.loads(body)["checks"]["store"] == "ok"

        # /readyz shares one round of checks for DEFAULT_CACHE_SECONDS: the round that found
        # the store down may still be the answer when the work is already done (it is, since
        # the workers look again as soon as the store answers).
        await until(store_ready, DEFAULT_CACHE_SECONDS + DEFAULT_TIMEOUT_SECONDS + 5)


# A worker's error pause doubles from 1 s (queue/runner.py): the fourth failure in a row
# pauses 8 s or more, far longer than taking up the work once the store answers may take.
LONG_PAUSE_FAILURES = 4
RESUME_SECONDS = 5.0


def stamped(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["at"] = time.monotonic()
    return event


async def test_work_resumes_as_soon_as_the_store_answers_not_after_the_error_pause(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    own_postgres: PostgresServer,
) -> None:
    """Once PostgreSQL is back, a worker whose pause the outage grew to 8 s or more takes up
    new work within seconds: the message accepted is prepared before that pause would end."""
    overrides = {"store": store_on(own_postgres)}
    with capture_logs(processors=[merge_contextvars, stamped]) as logs:
        async with gateway(overrides) as gw:
            await asyncio.to_thread(own_postgres.stop)

            def last_crash() -> dict[str, Any] | None:
                crashes = [
                    e
                    for e in list(logs)
                    if e["event"] == "worker.crashed" and e.get("worker") == "prepare"
                ]
                return crashes[-1] if crashes else None

            async def paused_long() -> bool:
                crash = last_crash()
                return crash is not None and crash["failures"] >= LONG_PAUSE_FAILURES

            await until(paused_long, 90)
            await asyncio.to_thread(own_postgres.start)

            async def accepted() -> bool:
                code, _ = await asyncio.to_thread(smtp_reply, gw.smtp.port, fax_mail("back"))
                return code == 250

            await until(accepted, 30)
            accepted_at = time.monotonic()

            async def prepared() -> bool:
                listed = await gw.db.run(jobs.list_jobs, None, 10)
                return any(j.state != JobState.RECEIVED for j in listed)

            await until(prepared, 60)
            prepared_at = time.monotonic()
            # Its last pause before the work (a start slower than a pause adds a crash).
            crash = last_crash()
            assert crash is not None and crash["failures"] >= LONG_PAUSE_FAILURES
            assert prepared_at < crash["at"] + crash["pause"], (
                "prepare waited out its error pause",
                crash,
            )
            assert prepared_at - accepted_at < RESUME_SECONDS
            [report] = await relay_server.wait_for(1, timeout=60)
            assert "delivered" in str(report.message["Subject"])


OUTAGE_SECONDS = 20.0
TRAFFIC_SECONDS = 3.0
MESSAGES_BEFORE = 3


async def test_twenty_seconds_without_postgresql_under_traffic_lose_and_double_nothing(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    own_postgres: PostgresServer,
) -> None:
    """Mail sent without pause while PostgreSQL is stopped for 20 s: every message answered 250
    becomes exactly one fax, and no job is faxed twice; the others were answered 4xx."""
    overrides = {
        "store": store_on(own_postgres),
        # The sandbox gives up on a webhook answered 500 for the whole outage, as a carrier
        # may; the reconciler finds those faxes, here within seconds instead of 15 minutes.
        "webhooks": {"reconcile_after_seconds": 2, "reconcile_interval_seconds": 1},
    }
    async with gateway(overrides) as gw:
        accepted: list[str] = []
        refused: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                try:
                    errors, reply = await aiosmtplib.send(
                        fax_mail(f"m{n}"), hostname="127.0.0.1", port=gw.smtp.port, timeout=30
                    )
                except aiosmtplib.SMTPRecipientsRefused as exc:  # at RCPT (the daily limit)
                    codes = [r.code for r in exc.recipients]
                    assert all(400 <= code < 500 for code in codes), codes
                    refused.extend(codes)
                    await asyncio.sleep(0.2)
                    continue
                except aiosmtplib.SMTPResponseException as exc:  # at DATA
                    assert 400 <= exc.code < 500, (exc.code, exc.message)
                    refused.append(exc.code)
                    await asyncio.sleep(0.2)
                    continue
                assert not errors
                accepted.append(reply.rsplit(" ", 1)[1])

        sending = asyncio.create_task(traffic())

        async def flowing() -> bool:
            return len(accepted) >= MESSAGES_BEFORE

        # Mail flows before the outage: a few 250s first, however slowly a loaded machine
        # answers the first messages (three seconds of traffic once gave none).
        await until(flowing, 60)
        await asyncio.sleep(TRAFFIC_SECONDS)
        await asyncio.to_thread(own_postgres.stop)
        before = len(accepted)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(own_postgres.start)
        during = len(accepted)

        async def accepting_again() -> bool:
            return len(accepted) > during

        await until(accepting_again, 30)
        await asyncio.sleep(TRAFFIC_SECONDS)
        stop.set()
        await asyncio.wait_for(sending, 60)
        assert before > 0 and refused, "the traffic did not span the outage"

        async def all_done() -> bool:
            listed = await gw.db.run(jobs.list_jobs, None, 5000)
            final = {j.id for j in listed if j.state == JobState.DONE}
            return set(accepted) <= final

        await until(all_done, 120)
        stored = {j.id for j in await gw.db.run(jobs.list_jobs, None, 5000)}
        assert set(accepted) <= stored, "a message answered 250 was lost"
        outbound = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
        # One fax per job, never two: each job's document URL is its own.
        urls = [f["url"] for f in outbound]
        assert len(urls) == len(set(urls)), "a job was faxed twice"
        assert len(outbound) == len(stored)
