"""/readyz on a real HTTP server: concurrent checks, timeouts, reasons without secrets, caching."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway import log
from gateway.config import Address
from gateway.ops.health import HEALTH_PROBE_KEY, Health, store_check
from gateway.ops.httpd import HttpServer, create_app
from gateway.store import Database
from gateway.store.meta import get_meta

Probe = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


class FakeClock:
    """A monotonic clock the test moves by hand, so cache expiry needs no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Health], Awaitable[Probe]]]:
    """Start a real gateway HTTP server with a Health's routes; return a /readyz prober."""
    servers: list[HttpServer] = []
    session = aiohttp.ClientSession()

    async def start(health: Health) -> Probe:
        app = create_app()
        health.add_routes(app)
        server = HttpServer(app, Address("127.0.0.1", 0))
        await server.start()
        servers.append(server)

        async def probe() -> tuple[int, dict[str, Any]]:
            async with session.get(f"http://127.0.0.1:{server.port}/readyz") as response:
                assert response.headers["Cache-Control"] == "no-store"
                return response.status, await response.json()

        return probe

    yield start
    await session.close()
    for server in servers:
        await server.stop()


async def passing() -> None:
    return None


def failing(reason: str) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        raise ConnectionError(reason)

    return check


async def test_all_checks_pass(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """With every check passing, /readyz answers 200 and lists each check as ok."""
    health = Health()
    health.add_check("store", passing)
    health.add_check("carrier", passing)
    status, body = await (await serve(health))()
    assert status == 200
    assert body == {"status": "ready", "checks": {"store": "ok", "carrier": "ok"}}


async def test_failing_check_gives_503_with_reason(
    serve: Callable[[Health], Awaitable[Probe]],
) -> None:
    """One failing check makes /readyz 503 and names the reason; the passing one stays ok."""
    health = Health()
    health.add_check("store", passing)
    health.add_check("relay", failing("cannot connect to 127.0.0.1:25"))
    with capture_logs() as logs:
        status, body = await (await serve(health))()
    assert status == 503
    assert body == {
        "status": "not ready",
        "checks": {"store": "ok", "relay": "cannot connect to 127.0.0.1:25"},
    }
    assert [e["event"] for e in logs if e["event"].startswith("health.")] == ["health.check_failed"]


async def test_checks_run_concurrently(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """Each check starts before any finishes: a slow dependency does not delay the others."""
    started: list[str] = []
    both_started = asyncio.Event()

    def waiting(name: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            # Only completes when the other check has started too: a serial run would time out.
            await both_started.wait()

        return check

    health = Health(timeout=10)
    health.add_check("a", waiting("a"))
    health.add_check("b", waiting("b"))
    status, body = await (await serve(health))()
    assert status == 200, body
    assert sorted(started) == ["a", "b"]


async def test_hanging_check_times_out(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """A check that never answers fails with 'no answer within ...' after its timeout."""
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    health = Health(timeout=5)
    health.add_check("store", passing)
    health.add_check("carrier", hangs, timeout=0.2)
    status, body = await (await serve(health))()
    assert status == 503
    assert body["checks"] == {"store": "ok", "carrier": "no answer within 0.2 s"}


async def test_reason_is_redacted(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """A registered secret or a bearer token in an exception never reaches the /readyz answer."""
    secret = "api-key-in-readyz-test-5f0c1d"
    log.register_secrets([secret])
    health = Health()
    health.add_check(
        "carrier", failing(f"401 for key {secret} with header Authorization: Bearer abc.def-123")
    )
    status, body = await (await serve(health))()
    assert status == 503
    reason = body["checks"]["carrier"]
    assert secret not in reason
    assert "abc.def-123" not in reason
    assert reason == "401 for key <SECRET> with header Authorization: Bearer <SECRET>"


async def test_results_are_cached(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """Probes within cache_seconds share one round of checks; after it, checks run again."""
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    clock = FakeClock()
    health = Health(cache_seconds=2, clock=clock)
    health.add_check("carrier", counted)
    probe = await serve(health)
    for _ in range(5):
        assert (await probe())[0] == 200
    assert calls == 1
    clock.now += 1.9
    await probe()
    assert calls == 1
    clock.now += 0.2
    await probe()
    assert calls == 2


async def test_concurrent_probes_share_one_round() -> None:
    """A burst of simultaneous probes runs each check once, even before any result is cached."""
    calls = 0
    release = asyncio.Event()

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    health = Health()
    health.add_check("storage", slow)
    probes = [asyncio.create_task(health.readiness()) for _ in range(10)]
    # Let every probe reach the shared round before the check may finish.
    await asyncio.wait(probes, timeout=0)
    release.set()
    results = await asyncio.gather(*probes)
    assert all(result.ready for result in results)
    assert calls == 1


async def test_hung_up_prober_does_not_cancel_the_round() -> None:
    """A prober that goes away mid-round does not cancel the checks others are waiting for."""
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    health = Health()
    health.add_check("relay", slow)
    first = asyncio.create_task(health.readiness())
    second = asyncio.create_task(health.readiness())
    await asyncio.wait([first, second], timeout=0)
    first.cancel()
    release.set()
    assert (await second).ready
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_no_checks_is_ready(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """A gateway with no checks registered is ready."""
    status, body = await (await serve(Health()))()
    assert (status, body) == (200, {"status": "ready", "checks": {}})


def test_duplicate_check_name_is_refused() -> None:
    """Registering two checks under one name is a programming error, not a silent replace."""
    health = Health()
    health.add_check("store", passing)
    with pytest.raises(ValueError, match="already registered"):
        health.add_check("store", passing)


async def test_recovery_is_logged_once(serve: Callable[[Health], Awaitable[Probe]]) -> None:
    """A failing check logs once while it keeps failing, and once more when it recovers."""
    broken = True

    async def flaky() -> None:
        if broken:
            raise OSError("bucket fax-documents does not exist")

    clock = FakeClock()
    health = Health(cache_seconds=1, clock=clock)
    health.add_check("storage", flaky)
    probe = await serve(health)
    with capture_logs() as logs:
        for _ in range(3):
            assert (await probe())[0] == 503
            clock.now += 5
        broken = False
        assert (await probe())[0] == 200
        clock.now += 5
        assert (await probe())[0] == 200
    events = [e["event"] for e in logs if e["event"].startswith("health.")]
    assert events == ["health.check_failed", "health.check_recovered"]


async def test_store_check_writes(
    tmp_path: Path, serve: Callable[[Health], Awaitable[Probe]]
) -> None:
    """store_check commits a real write to the store file, and reports a store it cannot use."""
    db = await Database(tmp_path / "store.db").open()
    try:
        health = Health()
        health.add_check("store", store_check(db))
        status, body = await (await serve(health))()
        assert (status, body["checks"]) == (200, {"store": "ok"})
        # Seen from a separate connection: the write was committed, not just buffered.
        with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as other:
            other.row_factory = sqlite3.Row
            assert get_meta(other, HEALTH_PROBE_KEY) is not None
    finally:
        db.close()

    closed = Health()
    closed.add_check("store", store_check(db))
    status, body = await (await serve(closed))()
    assert status == 503
    assert body["checks"]["store"]


async def test_store_check_fails_on_readonly_store(
    tmp_path: Path, serve: Callable[[Health], Awaitable[Probe]]
) -> None:
    """A store that can be read but not written (here: a query_only connection) is not ready."""
    db = await Database(tmp_path / "store.db").open()
    try:
        await db.run(lambda conn: conn.execute("PRAGMA query_only = ON"))
        health = Health()
        health.add_check("store", store_check(db))
        status, body = await (await serve(health))()
        assert status == 503
        assert "readonly" in body["checks"]["store"] or "read-only" in body["checks"]["store"]
    finally:
        db.close()
