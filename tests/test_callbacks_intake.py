"""The events worker gives way to a flood of webhooks, within its bound, and loses nothing.

`Intake`'s rule is checked with a movable clock; the flood runs against the real webhook
endpoint over HTTP, the real store and the sandbox carrier, with the events worker in a
running `Runner`, as in the daemon.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.callbacks.events import EventsWorker
from gateway.callbacks.intake import Intake
from gateway.callbacks.webhook import add_routes
from gateway.carrier.client import VoxtelesysClient
from gateway.config import Address, Config
from gateway.mailout.templates import MailRenderer
from gateway.ops.httpd import HttpServer, create_app
from gateway.outbound.reports import Reporter
from gateway.queue.backoff import RetryPolicy
from gateway.queue.runner import Runner
from gateway.store import Database
from gateway.store.backend import create_database
from gateway.store.events import pending_events
from tests.harness import TOKEN, harness_config
from tests.helpers import until
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

# -- the rule ------------------------------------------------------------------------------------


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_webhooks_one_at_a_time_never_make_the_worker_wait() -> None:
    """Fewer than busy_count webhooks within the window is not busy, however long it goes on."""
    ticks = Ticks()
    intake = Intake(busy_count=3, busy_window=0.05, clock=ticks)
    for _ in range(100):
        intake.stored()
        assert not intake.busy
        ticks.now += 0.03  # 33 a second: two of them within any 0.05 s
    asyncio.run(intake.give_way())
    assert intake.waits == 0


async def test_a_burst_is_waited_out_and_a_flood_only_until_the_bound() -> None:
    """give_way waits for a burst to end; in a flood it returns at max_wait, then catches up."""
    ticks = Ticks()
    intake = Intake(busy_count=2, busy_window=0.05, max_wait=1.0, clock=ticks)
    flooding = asyncio.Event()

    async def ticker() -> None:
        # The clock moves 5 ms per turn of the loop; a flood stores two webhooks per turn.
        while True:
            ticks.now += 0.005
            if flooding.is_set():
                intake.stored()
                intake.stored()
            await asyncio.sleep(0.001)

    clock = asyncio.create_task(ticker())
    try:
        flooding.set()
        await asyncio.sleep(0.01)
        assert intake.busy
        waiting = asyncio.create_task(intake.give_way())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a burst: waited out
        flooding.clear()
        await asyncio.wait_for(waiting, 5)
        assert not intake.busy and not intake.catching_up and intake.waits == 1

        flooding.set()  # a flood that does not end
        await asyncio.sleep(0.01)
        await asyncio.wait_for(intake.give_way(), 5)
        assert intake.busy and intake.catching_up  # returned at the bound, the flood still on
        assert intake.waits == 2 and intake.waited >= 1.0
        await intake.give_way()  # catching up: no wait at all
        assert intake.waits == 2
        intake.caught_up()
        waiting = asyncio.create_task(intake.give_way())
        await asyncio.sleep(0.02)
        assert not waiting.done()  # caught up, it gives way again
        flooding.clear()
        await asyncio.wait_for(waiting, 5)
    finally:
        clock.cancel()


def test_the_bounds_are_checked() -> None:
    """A rule that could never be busy or never wait is refused."""
    for bad in ({"busy_count": 0}, {"busy_window": 0}, {"max_wait": -1}):
        with pytest.raises(ValueError):
            Intake(**bad)  # type: ignore[arg-type]


# -- the endpoint and the worker -----------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    db: Database
    intake: Intake


@pytest.fixture
def config(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> Config:
    return harness_config(make_config, sandbox, relay_server)


@asynccontextmanager
async def running(config: Config, intake: Intake) -> AsyncIterator[Gateway]:
    """The webhook endpoint and the events worker sharing `intake`, the worker in a Runner."""
    db = await create_database(config).open()
    client = VoxtelesysClient.from_config(config.voxtelesys, retry=RetryPolicy.never())
    reporter = Reporter(
        config=config,
        db=db,
        renderer=MailRenderer(config.templates.dir),
        outbox_dir=config.data.dir / "outbox",
    )
    events = EventsWorker(config=config, db=db, client=client, reporter=reporter, intake=intake)
    runner = Runner([events], scan_interval=30, db=db)
    app = create_app()
    add_routes(app, config=config, db=db, wake=lambda: runner.wake(events.name), intake=intake)
    server = HttpServer(app, Address("127.0.0.1", 0))
    await server.start()
    await runner.start()
    try:
        yield Gateway(f"http://127.0.0.1:{server.port}/webhooks/fax/{TOKEN}", db, intake)
    finally:
        await runner.stop()
        await server.stop()
        await client.close()
        db.close()


async def _flood(url: str, count: int, *, connections: int = 10, pause: float = 0.0) -> float:
    """POST `count` webhooks of new (unknown) fax ids; the time the last answer came."""
    ids = iter(range(count))
    async with aiohttp.ClientSession() as session:

        async def sender() -> None:
            for _ in ids:
                body = {"type": "fax", "id": str(uuid.uuid4()), "status": "delivered"}
                async with session.post(url, json=body) as response:
                    assert response.status == 200
                if pause:
                    await asyncio.sleep(pause)  # pacing the client, not waiting for work

        await asyncio.gather(*(sender() for _ in range(connections)))
    return time.time()


@dataclass(frozen=True)
class Outcome:
    processed_at: float | None
    error: str | None


async def _all_processed(db: Database, seconds: float = 20) -> list[Outcome]:
    """Every event's outcome, once none is left to process."""

    async def done() -> bool:
        return not await db.run(pending_events)

    await until(done, seconds)
    return await db.run(_outcomes)


def _outcomes(conn: sqlite3.Connection) -> list[Outcome]:
    rows = conn.execute("SELECT processed_at, error FROM events ORDER BY id")
    return [Outcome(row["processed_at"], row["error"]) for row in rows]


async def test_a_burst_is_answered_first_and_every_event_applied_after_it(
    config: Config, sandbox: Sandbox
) -> None:
    """During a burst the events wait (the first round's aside); once it ends all are applied."""
    # Busy: two webhooks within a second; the bound far beyond the burst.
    intake = Intake(busy_count=2, busy_window=1.0, max_wait=60)
    async with running(config, intake) as gateway:
        await _flood(gateway.url, 60)
        waiting = await gateway.db.run(pending_events)
        gets_during = len(sandbox.requests(method="GET"))
        events = await _all_processed(gateway.db)
    # Only a first round, started on the first webhook before the intake looked busy, ran.
    assert len(waiting) >= 60 - 10 and gets_during <= 10
    assert len(events) == 60
    assert all(e.processed_at is not None and e.error == "unknown to the carrier" for e in events)
    assert intake.waits >= 1


async def test_a_flood_that_goes_on_is_applied_within_the_bound(
    config: Config, sandbox: Sandbox
) -> None:
    """Webhooks that keep coming make the worker wait max_wait, then it applies them meanwhile."""
    intake = Intake(busy_count=2, busy_window=1.0, max_wait=0.3)
    async with running(config, intake) as gateway:
        # About 1.5 s of webhooks, a few every 50 ms: busy all along.
        last_answer = await _flood(gateway.url, 90, connections=3, pause=0.05)
        events = await _all_processed(gateway.db)
    assert len(events) == 90
    assert all(e.error == "unknown to the carrier" for e in events)
    applied_during = [e for e in events if (e.processed_at or 0) < last_answer]
    assert len(applied_during) >= 10, "the worker waited past its bound"
