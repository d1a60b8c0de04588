"""The reconciler against the sandbox carrier: faxes whose webhooks never came are found."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from gateway.callbacks.reconcile import BOOKMARK, Bookmark
from gateway.config import Config
from gateway.ops.metrics import Metrics
from gateway.store.events import events_of
from gateway.store.meta import get_meta
from gateway.store.records import FaxState
from tests import samples
from tests.harness import Harness, harness_config, running
from tests.helpers import CALLER, DELIVERS, OTHER_FAX_LINE, OUR_FAX_LINE, Clock, subject_of
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox


@pytest.fixture
async def gateway(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> AsyncIterator[Harness]:
    """A gateway the carrier never calls back: no webhook URL is set at the sandbox."""
    config = harness_config(make_config, sandbox, relay_server)
    async with running(config, Clock()) as harness:
        yield harness


def next_round(gateway: Harness) -> None:
    gateway.clock.advance(gateway.config.webhooks.reconcile_interval_seconds)


async def test_first_round_sets_a_bookmark_and_mails_no_history(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Faxes from before the gateway's first round are not mailed; later ones are."""
    old = sandbox.inbound(OUR_FAX_LINE, CALLER, samples.pdf(1))
    await gateway.settle(reconcile=True)
    bookmark = Bookmark.load(await gateway.db.run(get_meta, BOOKMARK))
    assert bookmark is not None and bookmark.fax_id == old["id"]
    assert relay_server.messages == []

    new = sandbox.inbound(OTHER_FAX_LINE, CALLER, samples.pdf(3))
    next_round(gateway)
    await gateway.settle(reconcile=True)
    [mail] = relay_server.messages
    assert subject_of(mail.message) == "Fax from +1 555-666-8888, 3 pages"
    assert await gateway.db.run(events_of, old["id"]) == []
    bookmark = Bookmark.load(await gateway.db.run(get_meta, BOOKMARK))
    assert bookmark is not None and bookmark.fax_id == new["id"]


async def test_rounds_come_at_the_configured_interval(gateway: Harness, sandbox: Sandbox) -> None:
    """Between rounds the reconciler does nothing, not even ask the carrier."""
    await gateway.reconciler.run_once()
    asked = len(sandbox.requests("/faxes"))
    gateway.clock.advance(gateway.config.webhooks.reconcile_interval_seconds - 5)
    assert await gateway.reconciler.run_once() == 0
    assert len(sandbox.requests("/faxes")) == asked
    gateway.clock.advance(10)
    await gateway.reconciler.run_once()
    assert len(sandbox.requests("/faxes")) == asked + 1


async def test_a_fax_still_arriving_holds_the_bookmark(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """An inbound fax still being received is looked at again until it is complete."""
    await gateway.settle(reconcile=True)
    sandbox.configure(delay=3600)
    arriving = sandbox.inbound(OUR_FAX_LINE, CALLER, samples.tiff(2))
    done = sandbox.inbound(OTHER_FAX_LINE, CALLER, samples.pdf(1))
    sandbox.finish(done["id"])
    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert [subject_of(m.message) for m in relay_server.messages] == [
        "Fax from +1 555-666-8888, 1 page"
    ]
    bookmark = Bookmark.load(await gateway.db.run(get_meta, BOOKMARK))
    assert bookmark is not None and bookmark.fax_id not in (arriving["id"], done["id"])

    sandbox.finish(arriving["id"])
    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert len(relay_server.messages) == 2
    assert set(relay_server.messages[1].rcpt_tos) == {
        "fax-desk@example.com",
        "archive@example.com",
    }
    bookmark = Bookmark.load(await gateway.db.run(get_meta, BOOKMARK))
    assert bookmark is not None and bookmark.fax_id == done["id"]


async def test_the_walk_follows_the_carriers_pages(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """New inbound faxes spread over several pages of the list are all found."""
    await gateway.settle(reconcile=True)
    sandbox.configure(page_size=2)
    for _ in range(5):
        sandbox.inbound(OTHER_FAX_LINE, CALLER, samples.pdf(1))
    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert len(relay_server.messages) == 5
    assert len(sandbox.requests("/faxes", method="GET")) >= 3


async def test_an_event_applied_too_early_is_applied_again(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A `delivered` webhook the carrier did not confirm yet is reapplied by the reconciler."""
    sandbox.configure(delay=3600)
    _job, fax = await gateway.submit(DELIVERS)
    carrier_id = fax.carrier_id or ""
    early = {
        "type": "fax",
        "id": carrier_id,
        "direction": "outbound",
        "to": DELIVERS[1:],
        "from": "12015550100",
        "status": "delivered",
    }
    await gateway.post_webhook(early)
    await gateway.settle()
    assert (await gateway.fax(fax.id)).state is FaxState.SUBMITTED
    assert relay_server.messages == []

    sandbox.finish(carrier_id)
    gateway.clock.advance(gateway.config.webhooks.reconcile_after_seconds + 1)
    await gateway.settle(reconcile=True)
    assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED
    [mail] = relay_server.messages
    assert subject_of(mail.message).startswith("Fax to +1 201-555-0123 delivered")
    [event] = await gateway.db.run(events_of, carrier_id)
    assert event.processed_at is not None


async def test_a_young_fax_is_left_to_its_webhook(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Faxes submitted less than reconcile_after_seconds ago are not asked about."""
    await gateway.settle(reconcile=True)
    _job, fax = await gateway.submit(DELIVERS)
    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert sandbox.requests(f"/faxes/{fax.carrier_id}") == []
    assert relay_server.messages == []


async def test_an_unreachable_carrier_only_delays_the_round(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """When the carrier fails, the round logs it and the next round catches up."""
    await gateway.settle(reconcile=True)
    sandbox.inbound(OUR_FAX_LINE, CALLER, samples.pdf(1))
    sandbox.fail_next(count=1, status=503, method="GET")
    next_round(gateway)
    with capture_logs() as logs:
        assert await gateway.reconciler.run_once() == 0
    assert "reconcile.carrier_unavailable" in [e["event"] for e in logs]
    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert len(relay_server.messages) == 1


async def test_a_fax_the_carrier_lost_is_reported_failed_once_after_the_bound(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A submitted fax the carrier answers 404 for waits out webhooks.unknown_fax_after_seconds,
    then is reported failed once ("the carrier has no record"), and counted."""
    gateway.reconciler.metrics = metrics = Metrics()
    sandbox.configure(delay=3600)
    _job, fax = await gateway.submit(DELIVERS)
    carrier_id = fax.carrier_id or ""
    sandbox.fail_next(count=1000, status=404, method="GET", path=f"/api/v1/faxes/{carrier_id}")
    gateway.clock.advance(gateway.config.webhooks.reconcile_after_seconds + 1)
    with capture_logs() as logs:
        await gateway.settle(reconcile=True)
    assert "reconcile.fax_unknown_to_carrier" in [e["event"] for e in logs]
    assert (await gateway.fax(fax.id)).state is FaxState.SUBMITTED
    assert relay_server.messages == []

    gateway.clock.advance(gateway.config.webhooks.unknown_fax_after_seconds)
    await gateway.settle(reconcile=True)
    lost = await gateway.fax(fax.id)
    assert lost.state is FaxState.FAILED
    assert lost.error_description == "the carrier has no record of this fax"
    [mail] = relay_server.messages
    assert "failed" in subject_of(mail.message)
    assert "no record of this fax" in mail.message.get_body(("plain",)).get_content()
    assert metrics.faxes_lost_by_carrier._value.get() == 1

    next_round(gateway)
    await gateway.settle(reconcile=True)
    assert len(relay_server.messages) == 1
    assert metrics.faxes_lost_by_carrier._value.get() == 1
