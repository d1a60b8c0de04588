"""The events worker's batches: one claim for many events, one GET per fax, crashes charged fairly.

The store's batch rule (store/events.claim_events) is checked on SQLite directly; the worker's
coalescing, its verification by a page of the carrier's list and its behaviour when the
carrier goes away mid-batch run against the sandbox carrier through the real webhook endpoint
(tests/harness.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway.callbacks.events import EventsWorker
from gateway.carrier.client import VoxtelesysClient
from gateway.config import Config
from gateway.queue.backoff import RetryPolicy
from gateway.queue.runner import run_until_idle
from gateway.queue.schedule import crash_message
from gateway.store import Database
from gateway.store.events import (
    Processed,
    claim_events,
    events_of,
    mark_events_processed,
    pending_events,
    record_event,
)
from gateway.store.inbound import InboundState, inbound_by_carrier_id
from gateway.store.records import FaxState
from tests import samples
from tests.harness import Harness, harness_config, running
from tests.helpers import DELIVERS, FROM_NUMBER, OUR_FAX_LINE, Clock, until
from tests.servers.postgres import StoreBackend
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

MAX_PICKUPS = 3
NOW = 1_000_000.0


@pytest.fixture
def config(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> Config:
    return harness_config(make_config, sandbox, relay_server)


@pytest.fixture
async def gateway(config: Config, sandbox: Sandbox) -> AsyncIterator[Harness]:
    async with running(config, Clock()) as harness:
        sandbox.set_webhook(harness.webhook_url)
        yield harness


async def _post(gateway: Harness, carrier_id: str, status: str) -> None:
    body: dict[str, Any] = {
        "type": "fax",
        "id": carrier_id,
        "direction": "outbound",
        "to": DELIVERS[1:],
        "from": FROM_NUMBER[1:],
        "status": status,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.webhook_url, json=body) as response,
    ):
        assert response.status == 200


async def test_events_of_one_fax_in_a_batch_share_one_get(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Three events of one fax waiting together cost one GET /faxes/{id}, one applying, one mail."""
    _job, fax = await gateway.submit(DELIVERS)
    carrier_id = fax.carrier_id or ""
    await sandbox.wait_for_async(
        lambda: any(h["response_status"] == 200 for h in sandbox.webhooks(carrier_id)),
        what="the carrier's webhook answered",
    )
    for status in ("queued", "sending"):
        await _post(gateway, carrier_id, status)
    with capture_logs(processors=[merge_contextvars]) as logs:
        await gateway.settle()
    assert len(sandbox.requests(f"/faxes/{carrier_id}", method="GET")) == 1
    events = await gateway.db.run(events_of, carrier_id)
    assert sorted(e.status for e in events) == ["delivered", "queued", "sending"]
    assert all(e.processed_at is not None and e.error is None for e in events)
    # Each is marked with the record that was acted upon: the fax's latest state.
    assert {e.payload["status"] for e in events} == {"delivered"}
    [applied] = [e for e in logs if e["event"] == "event.applied"]
    assert applied["coalesced"] == 3 and applied["event_id"] == min(e.id for e in events)
    assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED
    assert len(relay_server.messages) == 1


async def test_a_carrier_gone_mid_batch_gives_back_the_events_not_tried(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """The batch stops at the first GET the carrier fails; later events keep no pickup, no try."""
    first, second = "11111111-0000-4000-8000-000000000000", "22222222-0000-4000-8000-000000000000"
    await _post(gateway, first, "delivered")
    await _post(gateway, second, "delivered")
    sandbox.fail_next(count=1, status=503, method="GET")
    await gateway.events.run_once()
    [tried] = await gateway.db.run(events_of, first)
    [untried] = await gateway.db.run(events_of, second)
    assert tried.processed_at is None and tried.attempts == 1 and "503" in (tried.error or "")
    assert untried.processed_at is None
    assert (untried.attempts, untried.pickups, untried.error) == (0, 0, None)
    assert len(sandbox.requests(method="GET")) == 1
    # The pause holds the rest of the queue until the failed event is due.
    assert await gateway.events.run_once() == 0


async def _answered(sandbox: Sandbox, carrier_id: str) -> None:
    await sandbox.wait_for_async(
        lambda: any(h["response_status"] == 200 for h in sandbox.webhooks(carrier_id)),
        what=f"the carrier's webhook for {carrier_id} answered",
    )


async def test_a_batch_of_several_faxes_is_verified_by_one_page_of_the_list(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Events of three outbound faxes waiting together cost one GET /faxes and no GET by id."""
    faxes = [(await gateway.submit(DELIVERS))[1] for _ in range(3)]
    for fax in faxes:
        await _answered(sandbox, fax.carrier_id or "")
    await gateway.settle()
    assert len(sandbox.requests("/faxes", method="GET")) == 1
    for fax in faxes:
        assert sandbox.requests(f"/faxes/{fax.carrier_id}", method="GET") == []
        assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED
        [event] = await gateway.db.run(events_of, fax.carrier_id or "")
        assert event.processed_at is not None and event.error is None
        assert event.payload["id"] == fax.carrier_id and event.payload["status"] == "delivered"
    assert len(relay_server.messages) == 3


async def test_faxes_not_on_the_page_and_inbound_ones_are_still_read_by_id(
    gateway: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A forged id and an inbound fax in a batch get their own GET; the outbound one does not."""
    _job, fax = await gateway.submit(DELIVERS)
    await _answered(sandbox, fax.carrier_id or "")
    inbound = sandbox.inbound(OUR_FAX_LINE, FROM_NUMBER, samples.pdf(1))
    await _answered(sandbox, inbound["id"])
    forged = "33333333-0000-4000-8000-000000000000"
    await _post(gateway, forged, "delivered")
    await gateway.settle()
    assert len(sandbox.requests("/faxes", method="GET")) == 1
    assert sandbox.requests(f"/faxes/{fax.carrier_id}", method="GET") == []
    assert len(sandbox.requests(f"/faxes/{inbound['id']}", method="GET")) == 1
    assert len(sandbox.requests(f"/faxes/{forged}", method="GET")) == 1
    [dropped] = await gateway.db.run(events_of, forged)
    assert dropped.error == "unknown to the carrier"
    assert (await gateway.fax(fax.id)).state is FaxState.DELIVERED
    row = await gateway.db.run(inbound_by_carrier_id, inbound["id"])
    assert row is not None and row.state is InboundState.MAILED
    assert len(relay_server.messages) == 2


async def test_a_page_the_carrier_refuses_to_list_is_a_miss(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """A 404 to the list (not an outage) costs nothing: every fax is then read by id."""
    first, second = "44444444-0000-4000-8000-000000000000", "55555555-0000-4000-8000-000000000000"
    await _post(gateway, first, "delivered")
    await _post(gateway, second, "delivered")
    sandbox.fail_next(count=1, status=404, method="GET")
    await gateway.settle()
    assert len(sandbox.requests("/faxes", method="GET")) == 1
    for carrier_id in (first, second):
        assert len(sandbox.requests(f"/faxes/{carrier_id}", method="GET")) == 1
        [event] = await gateway.db.run(events_of, carrier_id)
        assert (event.attempts, event.error) == (0, "unknown to the carrier")


def _forged(number: int) -> str:
    return f"{number:08d}-0000-4000-8000-000000000000"


async def test_the_gets_of_a_batch_are_read_ahead_each_once(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """Eight slow GETs by id are in flight together, and no fax is read twice."""
    ids = [_forged(n) for n in range(1, 9)]
    for carrier_id in ids:
        await _post(gateway, carrier_id, "delivered")
    for carrier_id in ids:
        sandbox.slow(0.4, method="GET", path=f"/api/v1/faxes/{carrier_id}")
    started = time.monotonic()
    await gateway.settle()
    # One after the other they take 3.2 s; together about one of them.
    assert time.monotonic() - started < 2.0
    for carrier_id in ids:
        assert len(sandbox.requests(f"/faxes/{carrier_id}", method="GET")) == 1
        [event] = await gateway.db.run(events_of, carrier_id)
        assert event.error == "unknown to the carrier"


async def test_a_get_failing_mid_batch_gives_back_the_faxes_read_ahead(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """The batch stops at the failed GET; a later fax whose record was already read waits too."""
    first, second, third = _forged(11), _forged(12), _forged(13)
    for carrier_id in (first, second, third):
        await _post(gateway, carrier_id, "delivered")
    # Twice: its GET read ahead, then its GET in its turn (the probe after a failed read-ahead).
    sandbox.fail_next(count=2, status=503, method="GET", path=f"/api/v1/faxes/{second}")
    await gateway.events.run_once()
    [dropped] = await gateway.db.run(events_of, first)
    [failed] = await gateway.db.run(events_of, second)
    [waiting] = await gateway.db.run(events_of, third)
    assert dropped.error == "unknown to the carrier"
    assert failed.processed_at is None and failed.attempts == 1 and "503" in (failed.error or "")
    assert waiting.processed_at is None
    assert (waiting.attempts, waiting.pickups, waiting.error) == (0, 0, None)


async def test_a_carrier_down_for_the_reads_ahead_gets_one_probe_at_a_time(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """The carrier lists, then fails every GET by id: the read-ahead's eight tries are the
    only parallel ones (no retries, no more started), then one GET at a time with the client's
    retries; once it answers again the batch reads ahead as before."""
    ids = [_forged(n) for n in range(21, 31)]
    for carrier_id in ids:
        await _post(gateway, carrier_id, "delivered")
    # The deadline far past the three tries' few milliseconds: it would cut their count
    # short (and fail the count below) only on a machine loaded enough to pass it.
    client = VoxtelesysClient.from_config(
        gateway.config.voxtelesys,
        retry=RetryPolicy(attempts=3, min_delay=0.01, max_delay=0.02, deadline=120),
    )
    events = EventsWorker(
        config=gateway.config,
        db=gateway.db,
        client=client,
        reporter=gateway.events.reporter,
        clock=gateway.clock,
    )
    try:
        sandbox.fail_next(count=100, status=503, method="GET", path="/api/v1/faxes/")
        await events.run_once()
        by_id = [r for r in sandbox.requests(method="GET") if r["path"] != "/api/v1/faxes"]
        assert all(r["status"] == 503 for r in by_id)
        tries = Counter(r["path"].rsplit("/", 1)[1] for r in by_id)
        # At most eight read ahead, one try each (the first failure cancels those not sent
        # yet), then the first fax's GET in its turn, three tries; nothing else.
        assert 3 <= tries.pop(ids[0]) <= 4, tries
        assert set(tries) <= set(ids[1:8]) and set(tries.values()) <= {1}, tries
        [first] = await gateway.db.run(events_of, ids[0])
        assert first.attempts == 1 and "503" in (first.error or "")
        sandbox.clear_faults()
        gateway.clock.advance(3600)
        started = len(sandbox.requests(method="GET"))
        await run_until_idle([events], timeout=30)
        for carrier_id in ids:
            [event] = await gateway.db.run(events_of, carrier_id)
            assert event.error == "unknown to the carrier"
        # The page, then each fax once (read ahead again).
        again = sandbox.requests(method="GET")[started:]
        assert sorted(r["path"] for r in again) == sorted(
            ["/api/v1/faxes"] + [f"/api/v1/faxes/{carrier_id}" for carrier_id in ids]
        )
    finally:
        await client.close()


async def test_an_answer_older_than_a_failed_read_ahead_does_not_start_it_again(
    gateway: Harness, sandbox: Sandbox
) -> None:
    """A GET read ahead that the carrier answered before another one failed, used in its turn
    after that failure, is no sign the carrier answers again: the next faxes are not read
    ahead (only one GET at a time goes until one is answered after the failure)."""
    sandbox.set_webhook(None)  # the events are the test's own
    client = VoxtelesysClient.from_config(
        gateway.config.voxtelesys,
        retry=RetryPolicy(attempts=3, min_delay=0.01, max_delay=0.02, deadline=120),
    )
    events = EventsWorker(
        config=gateway.config,
        db=gateway.db,
        client=client,
        reporter=gateway.events.reporter,
        clock=gateway.clock,
    )
    release = threading.Event()
    try:
        # A fax the carrier has (on its list's first page): applying its event writes to the
        # store, which the test holds while the read-ahead of the next faxes ends.
        known = await client.send_fax(DELIVERS, FROM_NUMBER, "https://example.invalid/a.pdf")
        answered, failing = _forged(41), _forged(42)
        later = [_forged(n) for n in range(43, 51)]
        for carrier_id in [known.id, answered, failing, *later]:
            await _post(gateway, carrier_id, "delivered")
        # The page slow: time for the test to hold the store. `failing`'s GET read ahead slow:
        # `answered`'s (sent with it) is answered well before it fails, even on a loaded machine.
        sandbox.slow(2.0, method="GET", path="/api/v1/faxes")
        sandbox.slow(3.0, method="GET", path=f"/api/v1/faxes/{failing}")
        sandbox.fail_next(count=10, status=503, method="GET", path=f"/api/v1/faxes/{failing}")

        async def claimed() -> bool:
            [event] = await gateway.db.read(events_of, known.id)
            return event.pickups > 0

        def hold(_conn: Any) -> bool:
            return release.wait(60)

        with capture_logs() as logs:
            batch = asyncio.create_task(events.run_once())
            await until(claimed, 30)
            held = asyncio.create_task(gateway.db.run(hold))

            async def read_ahead_failed() -> bool:
                return any(
                    line["event"] == "carrier.request"
                    and line.get("status") == 503
                    and line.get("path") == f"/faxes/{failing}"
                    for line in logs
                )

            await until(read_ahead_failed, 30)
            # The failure's callback ran with the response (same step of the loop).
            release.set()
            assert await held
            await batch
        [event] = await gateway.db.run(events_of, answered)
        assert event.error == "unknown to the carrier"
        # Stopped at `failing` (its GET in its turn failed too); none of the faxes after the
        # read-ahead's first eight was asked for.
        for carrier_id in later[5:]:
            assert sandbox.requests(f"/faxes/{carrier_id}", method="GET") == [], carrier_id
    finally:
        release.set()
        await client.close()


# -- the store's batch rule ----------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path, store_backend: StoreBackend) -> AsyncIterator[Database]:
    """An open store of each backend."""
    db = await store_backend.database(tmp_path / "data").open()
    try:
        yield db
    finally:
        db.close()


def _record(conn: Any, count: int) -> list[int]:
    ids = []
    for number in range(count):
        event_id = record_event(conn, f"fax-{number}", "delivered", "outbound", {}, NOW)
        assert event_id is not None
        ids.append(event_id)
    return ids


async def test_a_poison_event_is_held_and_its_batch_mates_are_not(store: Database) -> None:
    """A crash in one event charges its batch once; each is then claimed alone, only it is held."""
    ids = await store.run(_record, 5)
    poison = ids[2]
    for _round in range(20):  # bounded: each round claims something or ends the loop
        claimed, held = await store.run(claim_events, NOW, 50, MAX_PICKUPS)
        if not claimed and not held:
            break
        if poison in [event.id for event in claimed]:
            continue  # the process died applying the batch: nothing was marked
        done = [Processed(event.id, payload={}) for event in claimed]
        await store.run(mark_events_processed, done, NOW)
    assert await store.run(pending_events) == []
    events = {e.id: e for n in range(5) for e in await store.run(events_of, f"fax-{n}")}
    assert [i for i, e in events.items() if e.error is not None] == [poison]
    assert events[poison].error == crash_message(MAX_PICKUPS, "applying the event")
    # Charged once by the crash, once by the claim that applied it.
    assert all(events[i].pickups <= 2 for i in ids if i != poison)


async def test_batches_hold_only_events_never_interrupted(store: Database) -> None:
    """A batch is of events without pickups; an interrupted one comes first, and alone."""
    ids = await store.run(_record, 4)
    claimed, _held = await store.run(claim_events, NOW, 2, MAX_PICKUPS)
    assert [e.id for e in claimed] == ids[:2]  # then the process died
    again, _held = await store.run(claim_events, NOW, 50, MAX_PICKUPS)
    assert [e.id for e in again] == ids[:1]
    await store.run(mark_events_processed, [Processed(ids[0], payload={})], NOW)
    again, _held = await store.run(claim_events, NOW, 50, MAX_PICKUPS)
    assert [e.id for e in again] == ids[1:2]
    await store.run(mark_events_processed, [Processed(ids[1], payload={})], NOW)
    rest, _held = await store.run(claim_events, NOW, 50, MAX_PICKUPS)
    assert [e.id for e in rest] == ids[2:]


async def test_with_one_pickup_allowed_every_claim_is_of_one_event(store: Database) -> None:
    """queue.max_pickups = 1: a shared charge would hold the innocent, so no batches."""
    ids = await store.run(_record, 3)
    claimed, _held = await store.run(claim_events, NOW, 50, 1)
    assert [e.id for e in claimed] == ids[:1]
