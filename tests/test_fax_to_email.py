"""Fax to email end to end: sandbox carrier -> webhook server -> workers -> capturing relay.

Everything is real: the sandbox carrier in its thread, the webhook endpoint on an aiohttp
server on a free port, the store (once on SQLite, once on PostgreSQL), the outbox and an
aiosmtpd relay. Workers are run until idle
instead of waiting; time-based retries move a shared clock forward instead of sleeping.

The `Harness` (tests/harness.py) is also used by the other fax-to-email test modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.store.events import events_of
from gateway.store.inbound import InboundState, inbound_by_carrier_id
from gateway.store.records import FaxState
from tests import samples
from tests.harness import Harness, harness_config, running
from tests.helpers import (
    BUSY,
    CALLER,
    DELIVERS,
    FROM_NUMBER,
    INCOMPATIBLE,
    OTHER_FAX_LINE,
    OUR_FAX_LINE,
    Clock,
    attachments,
    subject_of,
)
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("store_backend")


async def webhooks_answered(sandbox: Sandbox, fax_id: str, count: int = 1) -> None:
    """Wait until the sandbox got `count` answers of 200 from our endpoint for the fax."""

    def answered() -> bool:
        hooks = sandbox.webhooks(fax_id)
        return sum(1 for h in hooks if h["response_status"] == 200) >= count

    await sandbox.wait_for_async(answered, what=f"{count} webhook(s) for {fax_id} answered 200")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> Config:
    return harness_config(make_config, sandbox, relay_server)


@pytest.fixture
async def gateway(config: Config, sandbox: Sandbox, clock: Clock) -> AsyncIterator[Harness]:
    async with running(config, clock) as harness:
        sandbox.set_webhook(harness.webhook_url)
        yield harness


# -- outbound: delivery reports ----------------------------------------------------------------


async def test_delivered_report_threads_under_the_original_with_the_document(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A delivered fax mails the sender one report: subject, facts, PDF, threading headers."""
    job, fax = await gateway.submit(DELIVERS, pages=3)
    await webhooks_answered(sandbox, fax.carrier_id or "")
    await gateway.settle()

    [mail] = relay_server.messages
    message = mail.message
    assert mail.rcpt_tos == ("alice@example.com",)
    assert subject_of(message) == "Fax to +1 201-555-0123 delivered, 3 pages (Re: Quarterly report)"
    assert message["In-Reply-To"] == "<original-1@mail.example.com>"
    assert message["References"] == "<original-1@mail.example.com>"
    text = message.get_body(("plain",)).get_content()
    for fact in ("+1 201-555-0123", "Pages:        3", "1 min 30 s", fax.carrier_id, job.id):
        assert fact in text
    [(name, content_type, data), (report, _type, _data)] = attachments(message)
    assert (name, content_type) == ("fax-to-12015550123.pdf", "application/pdf")
    assert data == gateway.documents[job.id]
    assert report == "transmission-report-12015550123.pdf"
    stored = await gateway.fax(fax.id)
    assert stored.state is FaxState.DELIVERED and stored.reported_at is not None


async def test_failed_report_says_why_and_whether_to_try_again(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A failed fax's report names the error, its code and the retry advice."""
    _job, busy = await gateway.submit(BUSY, subject="Contract")
    _job, incompatible = await gateway.submit(INCOMPATIBLE, subject="Invoice")
    for fax in (busy, incompatible):
        await webhooks_answered(sandbox, fax.carrier_id or "")
    await gateway.settle()

    by_subject = {subject_of(m.message): m.message for m in relay_server.messages}
    busy_mail = by_subject[
        "Fax to +1 201-555-0166 failed: far end is not able to receive (Re: Contract)"
    ]
    text = busy_mail.get_body(("plain",)).get_content()
    assert "(error 5109)" in text
    assert "Sending it again later may work" in text
    other = by_subject["Fax to +1 201-555-0188 failed: far end is not compatible (Re: Invoice)"]
    text = other.get_body(("plain",)).get_content()
    assert "(error 5108)" in text
    assert "will most likely fail the same way" in text
    assert [name for name, _t, _d in attachments(other)] == [
        "fax-to-12015550188.pdf",
        "transmission-report-12015550188.pdf",
    ]
    assert (await gateway.fax(busy.id)).error_code == 5109


async def test_duplicate_and_out_of_order_webhooks_change_nothing(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Retried and late webhooks are stored once, never undo `delivered`, mail nothing more."""
    _job, fax = await gateway.submit(DELIVERS)
    carrier_id = fax.carrier_id or ""
    await webhooks_answered(sandbox, carrier_id)
    await gateway.settle()
    assert len(relay_server.messages) == 1

    sandbox.resend_webhook(carrier_id)
    await webhooks_answered(sandbox, carrier_id, count=2)
    late = {
        "type": "fax",
        "id": carrier_id,
        "direction": "outbound",
        "to": DELIVERS[1:],
        "from": FROM_NUMBER[1:],
        "status": "delivering",
        "pages": "0",
        "duration": "0",
    }
    await gateway.post_webhook(late)
    await gateway.settle()

    events = await gateway.db.run(events_of, carrier_id)
    assert [e.status for e in events] == ["delivered", "delivering"]
    assert all(e.processed_at is not None for e in events)
    assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED
    assert len(relay_server.messages) == 1


async def test_get_style_webhooks_work_the_same(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """With the carrier calling by GET, the report arrives just the same."""
    sandbox.set_webhook(gateway.webhook_url, method="GET")
    _job, fax = await gateway.submit(BUSY)
    await webhooks_answered(sandbox, fax.carrier_id or "")
    assert sandbox.webhooks(fax.carrier_id)[0]["method"] == "GET"
    await gateway.settle()
    [mail] = relay_server.messages
    assert subject_of(mail.message).startswith("Fax to +1 201-555-0166 failed")


async def test_forged_webhook_for_an_unknown_fax_is_dropped(
    gateway: Harness, relay_server: CapturingRelay
) -> None:
    """A webhook for a fax the carrier does not know is stored, checked, dropped, logged."""
    forged = {
        "type": "fax",
        "id": "00000000-0000-4000-8000-000000000000",
        "direction": "inbound",
        "to": OUR_FAX_LINE[1:],
        "from": CALLER[1:],
        "status": "received",
        "links": [{"media": "http://attacker.example/fake.pdf"}],
    }
    await gateway.post_webhook(forged)
    with capture_logs() as logs:
        await gateway.settle()
    assert "event.unknown_fax" in [e["event"] for e in logs if e["log_level"] == "warning"]
    [event] = await gateway.db.run(events_of, forged["id"])
    assert event.processed_at is not None and event.error == "unknown to the carrier"
    assert await gateway.db.run(inbound_by_carrier_id, forged["id"]) is None
    assert relay_server.messages == []


async def test_subject_injection_cannot_add_headers(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """CR/LF in the user's subject stays inside one Subject line; no header is added."""
    subject = "Hello\r\nBcc: victim@example.com\r\nX-Injected: yes"
    _job, fax = await gateway.submit(DELIVERS, subject=subject)
    await webhooks_answered(sandbox, fax.carrier_id or "")
    await gateway.settle()
    [mail] = relay_server.messages
    message = mail.message
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert mail.rcpt_tos == ("alice@example.com",)
    assert "\n" not in message["Subject"]
    assert subject_of(message).endswith("(Re: Hello Bcc: victim@example.com X-Injected: yes)")


async def test_line_breaks_in_carrier_numbers_cannot_add_headers(
    config: Config, relay_server: CapturingRelay
) -> None:
    """A caller id with CR/LF and a header in it is shown as "unknown" and adds nothing."""
    unverified = config.model_copy(
        update={
            "webhooks": config.webhooks.model_copy(update={"verify": False}),
            # The media is on the test's document server, a loopback origin not the carrier's.
            "inbound": config.inbound.model_copy(update={"allow_private_media": True}),
        }
    )
    async with running(unverified) as gateway, aiohttp.ClientSession() as session:
        gateway.documents["media-1"] = samples.pdf(1)
        injected = {
            "type": "fax",
            "id": "in-injected-1",
            "direction": "inbound",
            "to": OUR_FAX_LINE[1:],
            "from": "1555\r\nBcc: victim@example.com\r\nSubject: free money",
            "status": "received",
            "pages": "1",
            "links": [{"media": f"{gateway.url}/documents/media-1"}],
        }
        async with session.post(gateway.webhook_url, json=injected) as response:
            assert response.status == 200
        await gateway.settle()
    [mail] = relay_server.messages
    message = mail.message
    assert set(mail.rcpt_tos) == {"fax-desk@example.com", "archive@example.com"}
    assert message["Bcc"] is None
    assert subject_of(message) == "Fax from unknown, 1 page"
    assert "victim" not in mail.data.decode()
    [(name, _type, _data)] = attachments(message)
    assert name.endswith("-from-unknown.pdf")


# -- inbound faxes -----------------------------------------------------------------------------


async def test_inbound_fax_to_a_routed_number_reaches_its_inbox_as_pdf(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A TIFF fax to a routed number is stored, converted to PDF, mailed with a preview."""
    created = sandbox.inbound(OUR_FAX_LINE, CALLER, samples.tiff(3))
    await webhooks_answered(sandbox, created["id"])
    await gateway.settle()

    [mail] = relay_server.messages
    assert set(mail.rcpt_tos) == {"fax-desk@example.com", "archive@example.com"}
    message = mail.message
    assert subject_of(message) == "Fax from +1 555-666-8888, 3 pages"
    text = message.get_body(("plain",)).get_content()
    for fact in ("+1 555-666-8888", "+1 201-555-0142", "Pages:        3", created["id"]):
        assert fact in text
    [(name, content_type, data)] = attachments(message)
    assert content_type == "application/pdf"
    assert name.startswith("fax-") and name.endswith("-from-15556668888.pdf")
    assert data.startswith(b"%PDF-")
    html = message.get_body(("html",))
    assert html is not None
    [image] = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert f"cid:{image['Content-ID'].strip('<>')}" in html.get_content()

    row = await gateway.db.run(inbound_by_carrier_id, created["id"])
    assert row is not None and row.state is InboundState.MAILED
    # The relay took it: the stored copy is gone, the mailbox is the archive.
    assert row.file_path is None
    assert list((gateway.config.data.dir / "inbound").iterdir()) == []


async def test_inbound_fax_to_another_number_goes_to_the_default_recipients(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A fax to a number without a route goes to inbound.default_recipients."""
    created = sandbox.inbound(OTHER_FAX_LINE, CALLER, samples.pdf(1))
    await webhooks_answered(sandbox, created["id"])
    await gateway.settle()
    [mail] = relay_server.messages
    assert mail.rcpt_tos == ("office@example.com",)
    assert subject_of(mail.message) == "Fax from +1 555-666-8888, 1 page"


async def test_relay_down_then_back_delivers_the_fax_once(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """While the relay is down the fax waits on disk; when it is back it arrives once."""
    relay_server.go_down()
    created = sandbox.inbound(OUR_FAX_LINE, CALLER, samples.tiff(1))
    await webhooks_answered(sandbox, created["id"])
    await gateway.settle()
    row = await gateway.db.run(inbound_by_carrier_id, created["id"])
    assert row is not None and row.state is InboundState.MAILED
    assert row.file_path is not None
    assert await asyncio.to_thread(Path(row.file_path).exists)

    relay_server.come_up()
    gateway.clock.advance(3600)
    await gateway.settle()
    gateway.clock.advance(3600)
    await gateway.settle()
    assert len(relay_server.messages) == 1
    row = await gateway.db.run(inbound_by_carrier_id, created["id"])
    assert row is not None and row.file_path is None


async def test_relay_down_across_a_restart_still_delivers_once(
    config: Config, sandbox: Sandbox, relay_server: CapturingRelay, clock: Clock
) -> None:
    """A fax and a report queued while the relay is down go out after a gateway restart."""
    relay_server.go_down()
    async with running(config, clock) as first:
        sandbox.set_webhook(first.webhook_url)
        created = sandbox.inbound(OUR_FAX_LINE, CALLER, samples.tiff(1))
        await webhooks_answered(sandbox, created["id"])
        _job, fax = await first.submit(DELIVERS)
        await webhooks_answered(sandbox, fax.carrier_id or "")
        await first.settle()
    assert relay_server.messages == []

    relay_server.come_up()
    clock.advance(3600)
    async with running(config, clock) as second:
        await second.settle()
        clock.advance(3600)
        await second.settle()
    subjects = sorted(subject_of(m.message) for m in relay_server.messages)
    assert subjects == [
        "Fax from +1 555-666-8888, 1 page",
        "Fax to +1 201-555-0123 delivered, 2 pages (Re: Quarterly report)",
    ]


# -- missed webhooks ---------------------------------------------------------------------------


async def test_reconciler_finds_what_lost_webhooks_never_said(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Dropped webhooks (outbound and inbound) are made good by the reconciler."""
    await gateway.settle(reconcile=True)  # first round: sets the inbound bookmark
    sandbox.drop_webhooks(2)
    _job, fax = await gateway.submit(BUSY)
    created = sandbox.inbound(OTHER_FAX_LINE, CALLER, samples.pdf(2))

    def both_dropped() -> bool:
        return len([h for h in sandbox.webhooks() if h["dropped"]]) == 2

    await sandbox.wait_for_async(both_dropped, what="two dropped webhooks")
    await gateway.settle()
    assert relay_server.messages == []

    gateway.clock.advance(gateway.config.webhooks.reconcile_interval_seconds + 1000)
    await gateway.settle(reconcile=True)
    subjects = sorted(subject_of(m.message) for m in relay_server.messages)
    assert subjects == [
        "Fax from +1 555-666-8888, 2 pages",
        "Fax to +1 201-555-0166 failed: far end is not able to receive (Re: Quarterly report)",
    ]
    assert (await gateway.fax(fax.id)).state is FaxState.FAILED
    assert created["id"] in [e.carrier_id for e in await gateway.db.run(events_of, created["id"])]


async def test_an_unreachable_carrier_leaves_the_event_for_later(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """When the webhook cannot be verified the event waits, with backoff, and is not lost."""
    _job, fax = await gateway.submit(DELIVERS)
    carrier_id = fax.carrier_id or ""
    await webhooks_answered(sandbox, carrier_id)
    sandbox.fail_next(count=1, status=503, method="GET", path=f"/api/v1/faxes/{carrier_id}")
    await gateway.settle()
    [event] = await gateway.db.run(events_of, carrier_id)
    assert event.processed_at is None and event.attempts == 1
    assert "503" in (event.error or "")
    assert relay_server.messages == []
    # Not retried at once, only after the backoff.
    await gateway.settle()
    assert len(sandbox.requests(f"/faxes/{carrier_id}")) == 1

    gateway.clock.advance(gateway.config.queue.max_backoff_seconds)
    await gateway.settle()
    assert len(relay_server.messages) == 1
    assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED


async def test_without_verification_a_late_status_still_cannot_undo_delivered(
    config: Config, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """With webhooks.verify off the payload is used as it is, and order still cannot hurt."""
    unverified = config.model_copy(
        update={"webhooks": config.webhooks.model_copy(update={"verify": False})}
    )
    async with running(unverified) as gateway:
        sandbox.set_webhook(gateway.webhook_url)
        _job, fax = await gateway.submit(DELIVERS)
        carrier_id = fax.carrier_id or ""
        await webhooks_answered(sandbox, carrier_id)
        late = {
            "type": "fax",
            "id": carrier_id,
            "direction": "outbound",
            "to": DELIVERS[1:],
            "from": FROM_NUMBER[1:],
            "status": "delivering",
            "pages": "0",
        }
        await gateway.post_webhook(late)
        await gateway.settle()
        stored = await gateway.fax(fax.id)
        assert (stored.state, stored.carrier_status, stored.pages) == (
            FaxState.DELIVERED,
            "delivered",
            2,
        )
        assert sandbox.requests(f"/faxes/{carrier_id}") == []
    assert len(relay_server.messages) == 1
