"""/metrics on a real HTTP server: token check, counters that move, queue depth from a store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.callbacks.webhook import WebhookMetrics
from gateway.config import Address
from gateway.ops.httpd import HttpServer, create_app
from gateway.ops.metrics import Metrics, add_routes
from gateway.store import Database, transaction

TOKEN = "metrics-token-7d1f0a9e4b"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Metrics, str | None], Awaitable[str]]]:
    """Start a real HTTP server with /metrics for a Metrics; return its URL."""
    servers: list[HttpServer] = []

    async def start(metrics: Metrics, token: str | None) -> str:
        app = create_app()
        add_routes(app, metrics, token)
        server = HttpServer(app, Address("127.0.0.1", 0))
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}/metrics"

    yield start
    for server in servers:
        await server.stop()


async def scrape(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=dict(headers or {})) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == dict(labels or {}):
                return s.value
    return None


async def test_metrics_without_token(serve: Callable[..., Awaitable[str]]) -> None:
    """Without http.metrics_token, /metrics answers anyone in the Prometheus text format."""
    url = await serve(Metrics(), None)
    status, content_type, text = await scrape(url)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert sample(text, "faxgw_build_info", {"version": __version__}) == 1.0
    assert sample(text, "faxgw_smtp_messages_accepted_total") == 0.0
    assert sample(text, "process_open_fds") is not None


async def test_metrics_token_required(serve: Callable[..., Awaitable[str]]) -> None:
    """With a token set, /metrics is 401 without it, with a wrong one, or another scheme."""
    url = await serve(Metrics(), TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        status, _, text = await scrape(url, headers)
        assert status == 401, headers
        assert "faxgw_" not in text


async def test_metrics_token_accepted(serve: Callable[..., Awaitable[str]]) -> None:
    """The right bearer token (any case of 'Bearer') gets the metrics."""
    url = await serve(Metrics(), TOKEN)
    for scheme in ("Bearer", "bearer"):
        status, _, text = await scrape(url, {"Authorization": f"{scheme} {TOKEN}"})
        assert status == 200
        assert "faxgw_smtp_rejected" in text


async def test_unauthorized_answer_names_the_scheme(serve: Callable[..., Awaitable[str]]) -> None:
    """A 401 carries WWW-Authenticate: Bearer so a person with curl sees what is expected."""
    url = await serve(Metrics(), TOKEN)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_counters_move(serve: Callable[..., Awaitable[str]]) -> None:
    """Counting through the Metrics attributes shows up in the next scrape."""
    metrics = Metrics()
    url = await serve(metrics, None)
    metrics.smtp_accepted.inc()
    metrics.smtp_rejected.labels(reason="relay_denied").inc()
    metrics.smtp_rejected.labels(reason="relay_denied").inc()
    metrics.smtp_rejected.labels(reason="bad_number").inc()
    metrics.fax_final("delivered", seconds_since_submitted=95.0)
    metrics.fax_final("failed", error_code=5109, seconds_since_submitted=700.0)
    metrics.received_to_submitted.observe(12.5)
    metrics.inbound_faxes.labels(status="mailed").inc()
    metrics.webhook_events.labels(direction="outbound", outcome="applied").inc()
    metrics.webhook_handling.observe(0.03)
    metrics.mail_sent.labels(kind="delivered").inc()
    metrics.mail_failed.labels(kind="inbound").inc()
    metrics.mail_dead.labels(kind="inbound").inc()

    _, _, text = await scrape(url)
    assert sample(text, "faxgw_smtp_messages_accepted_total") == 1
    assert sample(text, "faxgw_smtp_rejected_total", {"reason": "relay_denied"}) == 2
    assert sample(text, "faxgw_smtp_rejected_total", {"reason": "bad_number"}) == 1
    assert sample(text, "faxgw_faxes_total", {"status": "delivered", "error_code": ""}) == 1
    assert sample(text, "faxgw_faxes_total", {"status": "failed", "error_code": "5109"}) == 1
    assert sample(text, "faxgw_fax_submitted_to_final_seconds_count") == 2
    assert sample(text, "faxgw_fax_submitted_to_final_seconds_sum") == 795.0
    assert sample(text, "faxgw_fax_submitted_to_final_seconds_bucket", {"le": "120.0"}) == 1
    assert sample(text, "faxgw_fax_received_to_submitted_seconds_count") == 1
    assert sample(text, "faxgw_inbound_faxes_total", {"status": "mailed"}) == 1
    labels = {"direction": "outbound", "outcome": "applied"}
    assert sample(text, "faxgw_webhook_events_total", labels) == 1
    assert sample(text, "faxgw_webhook_handling_seconds_count") == 1
    assert sample(text, "faxgw_mail_sent_total", {"kind": "delivered"}) == 1
    assert sample(text, "faxgw_mail_failed_total", {"kind": "inbound"}) == 1
    assert sample(text, "faxgw_mail_dead_total", {"kind": "inbound"}) == 1


def test_webhook_endpoint_protocol() -> None:
    """Metrics is what callbacks.webhook reports to: webhook_event(result) counts by result."""
    metrics = Metrics()
    reporter: WebhookMetrics = metrics
    reporter.webhook_event("stored")
    reporter.webhook_event("duplicate")
    reporter.webhook_event("stored")
    value = metrics.registry.get_sample_value
    assert value("faxgw_webhook_requests_total", {"result": "stored"}) == 2
    assert value("faxgw_webhook_requests_total", {"result": "duplicate"}) == 1


def test_gateways_do_not_share_metrics() -> None:
    """Two Metrics in one process count separately (no global registry)."""
    first, second = Metrics(), Metrics()
    first.smtp_accepted.inc()
    assert first.registry.get_sample_value("faxgw_smtp_messages_accepted_total") == 1
    assert second.registry.get_sample_value("faxgw_smtp_messages_accepted_total") == 0


async def test_openmetrics_negotiated(serve: Callable[..., Awaitable[str]]) -> None:
    """A scraper asking for OpenMetrics gets it, ending with # EOF."""
    url = await serve(Metrics(), None)
    status, content_type, text = await scrape(
        url, {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


def _insert_job(conn: sqlite3.Connection, job_id: str, state: str) -> None:
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT INTO jobs (id, state, created_at, updated_at, sender, from_number,"
            " spool_path) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, state, now, now, "alice@example.com", "+12015550100", f"/spool/{job_id}"),
        )


def _set_state(conn: sqlite3.Connection, job_id: str, state: str) -> None:
    with transaction(conn):
        conn.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))


def _depth_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    # What the daemon registers is gateway.store.jobs.queue_depth; this is the same shape.
    rows = conn.execute(
        "SELECT state, count(*) AS n FROM jobs WHERE state NOT IN ('done', 'failed') GROUP BY state"
    )
    return {row["state"]: row["n"] for row in rows}


async def test_queue_depth_from_store(tmp_path: Path, serve: Callable[..., Awaitable[str]]) -> None:
    """faxgw_queue_depth is read from a real store file at each scrape; emptied states show 0."""
    db = await Database(tmp_path / "store.db").open()
    try:
        for n, state in enumerate(["received", "received", "submitted", "held", "done"]):
            await db.run(_insert_job, f"job{n}", state)
        metrics = Metrics()
        metrics.add_queue("jobs", lambda: db.run(_depth_by_state), states=["prepared"])
        url = await serve(metrics, None)

        _, _, text = await scrape(url)
        depth = {
            state: sample(text, "faxgw_queue_depth", {"queue": "jobs", "state": state})
            for state in ("received", "prepared", "submitted", "held", "done")
        }
        assert depth == {"received": 2, "prepared": 0, "submitted": 1, "held": 1, "done": None}

        await db.run(_set_state, "job3", "done")  # the held job is released and finishes
        await db.run(_insert_job, "job9", "prepared")
        _, _, text = await scrape(url)
        assert sample(text, "faxgw_queue_depth", {"queue": "jobs", "state": "held"}) == 0
        assert sample(text, "faxgw_queue_depth", {"queue": "jobs", "state": "prepared"}) == 1
    finally:
        db.close()


async def test_queue_depth_read_failure(serve: Callable[..., Awaitable[str]]) -> None:
    """A queue whose depth cannot be read drops its series and counts an error; scrape is 200."""
    healthy = True

    async def read() -> dict[str, int]:
        if not healthy:
            raise OSError("disk I/O error")
        return {"pending": 3}

    never = asyncio.Event()

    async def hangs() -> dict[str, int]:
        await never.wait()
        return {}

    metrics = Metrics(queue_read_seconds=0.2)
    metrics.add_queue("outbox", read)
    metrics.add_queue("inbound", hangs)
    url = await serve(metrics, None)

    status, _, text = await scrape(url)
    assert status == 200
    assert sample(text, "faxgw_queue_depth", {"queue": "outbox", "state": "pending"}) == 3
    assert sample(text, "faxgw_metrics_collection_errors_total", {"queue": "inbound"}) == 1

    healthy = False
    status, _, text = await scrape(url)
    assert status == 200
    assert sample(text, "faxgw_queue_depth", {"queue": "outbox", "state": "pending"}) is None
    assert sample(text, "faxgw_metrics_collection_errors_total", {"queue": "outbox"}) == 1
    assert sample(text, "faxgw_metrics_collection_errors_total", {"queue": "inbound"}) == 2


def test_queue_registered_once() -> None:
    """Two depth readers for one queue name are a programming error."""
    metrics = Metrics()

    async def read() -> dict[str, int]:
        return {}

    metrics.add_queue("jobs", read)
    with pytest.raises(ValueError, match="already"):
        metrics.add_queue("jobs", read)
