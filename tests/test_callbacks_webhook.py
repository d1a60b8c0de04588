"""The webhook endpoint on a real aiohttp server with a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from yarl import URL

from gateway.callbacks.webhook import add_routes
from gateway.config import Address, Config
from gateway.ops.httpd import HttpServer, create_app
from gateway.store import Database
from gateway.store.events import Event, events_of, pending_events

TOKEN = "test-webhook-token-0123456789"
FAX_ID = "4f778644-6e11-48f2-99eb-a32e4e1a5748"

PAYLOAD: dict[str, Any] = {
    "type": "fax",
    "id": FAX_ID,
    "direction": "outbound",
    "to": "15556667777",
    "from": "15556668888",
    "status": "delivered",
    "time": "2024-06-19T15:38:17.140Z",
    "pages": "3",
    "duration": "95",
}


@dataclass
class Endpoint:
    url: str
    db: Database
    session: aiohttp.ClientSession
    wakes: list[int] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)

    def hook(self, token: str = TOKEN) -> str:
        return f"{self.url}/webhooks/fax/{token}"

    async def post(self, payload: Any, token: str = TOKEN) -> tuple[int, Any]:
        async with self.session.post(self.hook(token), json=payload) as response:
            return response.status, await response.json()

    async def events(self, carrier_id: str = FAX_ID) -> list[Event]:
        return await self.db.run(events_of, carrier_id)


class _Metrics:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def webhook_event(self, result: str) -> None:
        self.sink.append(result)


StartEndpoint = Callable[..., Awaitable[Endpoint]]


@pytest.fixture
async def start_endpoint(make_config: Callable[..., Config]) -> AsyncIterator[StartEndpoint]:
    """Starts the endpoint (with a config override) on a free port; all stopped afterwards."""
    started: list[tuple[HttpServer, Database, aiohttp.ClientSession]] = []

    async def start(override: dict[str, Any] | None = None) -> Endpoint:
        config = make_config(override)
        db = await Database(config.data.dir / "store.db").open()
        app = create_app(client_max_size=max(config.http.max_webhook_bytes, 1024**2))
        wakes: list[int] = []
        counted: list[str] = []
        add_routes(
            app, config=config, db=db, wake=lambda: wakes.append(1), metrics=_Metrics(counted)
        )
        server = HttpServer(app, Address("127.0.0.1", 0))
        await server.start()
        session = aiohttp.ClientSession()
        started.append((server, db, session))
        return Endpoint(f"http://127.0.0.1:{server.port}", db, session, wakes, counted)

    yield start
    for server, db, session in started:
        await session.close()
        await server.stop()
        db.close()


@pytest.fixture
async def endpoint(start_endpoint: StartEndpoint) -> Endpoint:
    return await start_endpoint()


async def test_post_is_stored_then_answered_and_wakes_the_worker(endpoint: Endpoint) -> None:
    """A valid POST webhook is committed to `events`, answered 200, and wakes the worker."""
    status, body = await endpoint.post(PAYLOAD)
    assert (status, body) == (200, {"result": "stored"})
    [event] = await endpoint.events()
    assert (event.status, event.direction, event.processed_at) == ("delivered", "outbound", None)
    assert event.payload["pages"] == "3"
    assert endpoint.wakes == [1]
    assert endpoint.counted == ["stored"]


async def test_duplicates_are_answered_200_and_stored_once(endpoint: Endpoint) -> None:
    """The carrier's retries of one (fax, status) are answered 200 and change nothing."""
    for _ in range(3):
        status, _body = await endpoint.post(PAYLOAD)
        assert status == 200
    status, body = await endpoint.post({**PAYLOAD, "status": " Delivered "})
    assert (status, body) == (200, {"result": "duplicate"})
    assert len(await endpoint.events()) == 1
    assert endpoint.wakes == [1]
    # A different status of the same fax is a new event.
    status, body = await endpoint.post({**PAYLOAD, "status": "delivering"})
    assert body == {"result": "stored"}
    assert [e.status for e in await endpoint.events()] == ["delivered", "delivering"]


async def test_get_style_webhook_with_bracketed_fields(endpoint: Endpoint) -> None:
    """A GET webhook's query parameters are stored nested, like the POST body would be."""
    params = {
        "type": "fax",
        "id": "in-1",
        "direction": "inbound",
        "to": "12015550123",
        "from": "15556668888",
        "status": "received",
        "pages": "2",
        "links[0][media]": "https://media.example/in-1.tiff",
        "error[code]": "",
    }
    async with endpoint.session.get(endpoint.hook(), params=params) as response:
        assert response.status == 200
    [event] = await endpoint.events("in-1")
    assert event.direction == "inbound"
    assert event.payload["links"] == [{"media": "https://media.example/in-1.tiff"}]


@pytest.mark.parametrize("token", ["wrong-token-0123456789abc", TOKEN[:-1], TOKEN + "x", ""])
async def test_wrong_or_missing_token_is_404_and_not_logged(endpoint: Endpoint, token: str) -> None:
    """Without the exact token nothing is stored, the answer is 404, and no token is logged."""
    with capture_logs() as logs:
        status, _body = await endpoint.post(PAYLOAD, token=token)
        async with endpoint.session.get(endpoint.url + "/webhooks/fax") as response:
            bare_status = response.status
    assert status == 404
    assert bare_status == 404
    assert await endpoint.events() == []
    assert [e["event"] for e in logs] == ["webhook.bad_token", "webhook.bad_token"]
    assert TOKEN not in repr(logs)
    assert endpoint.wakes == []


async def test_a_flood_of_wrong_tokens_is_one_log_line_and_every_request_counted(
    endpoint: Endpoint,
) -> None:
    """60 requests with a wrong token log one line (a prober cannot fill the log), count 60."""
    with capture_logs() as logs:
        for _ in range(60):
            status, _body = await endpoint.post(PAYLOAD, token="wrong-token-0123456789abc")
            assert status == 404
    assert [e["event"] for e in logs] == ["webhook.bad_token"]
    assert endpoint.counted == ["bad_token"] * 60


async def test_body_over_the_limit_is_413(start_endpoint: StartEndpoint) -> None:
    """A body larger than http.max_webhook_bytes is refused with 413, with or without a length."""
    ep = await start_endpoint({"http": {"max_webhook_bytes": 1024}})
    big = {**PAYLOAD, "padding": "x" * 2000}
    status, body = await ep.post(big)
    assert status == 413
    assert "1024" in body["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 100

    async with ep.session.post(ep.hook(), data=chunks()) as response:
        assert response.status == 413
    assert await ep.events() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"", "empty body"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"' + b'\\"' * 30_000 + b"[" * 40, "body is not JSON"),  # a string never closed
        (b'{"type": "sms", "id": "x", "status": "delivered"}', "type must be 'fax'"),
        (b'{"id": "x", "status": "delivered"}', "type must be 'fax'"),
        (b'{"type": "fax", "status": "delivered"}', "missing id"),
        (b'{"type": "fax", "id": "x"}', "missing status"),
        (b'{"type": "fax", "id": "  ", "status": "delivered"}', "id is empty"),
        (b'{"type": "fax", "id": {"a": 1}, "status": "delivered"}', "id must be a string"),
        (b'{"type": "fax", "id": "a\\r\\nb", "status": "delivered"}', "control characters"),
    ],
)
async def test_malformed_payloads_are_400_with_a_reason(
    endpoint: Endpoint, body: bytes, reason: str
) -> None:
    """Anything that is not a fax webhook is answered 400 and says why; nothing is stored."""
    async with endpoint.session.post(
        endpoint.hook(), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert reason in (await response.json())["error"]
    assert await endpoint.db.run(pending_events) == []
    assert endpoint.counted == ["malformed"]


def _deep(levels: int) -> Any:
    """A JSON value `levels` arrays deep."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


async def _refused_once(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture, send: Callable[[], Awaitable[int]]
) -> str:
    """Send, expect 400, one `webhook.malformed` line and no traceback anywhere; its reason."""
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        # CPU of this thread (the loop: the client and the handler that parses), not wall
        # time, which a loaded machine stretches.
        started = time.thread_time()
        status = await send()
        elapsed = time.thread_time() - started
    assert status == 400
    assert [e["event"] for e in logs] == ["webhook.malformed"]
    assert "exc_info" not in logs[0]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert endpoint.counted == ["malformed"]
    assert await endpoint.db.run(pending_events) == []
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    return str(logs[0]["reason"])


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000,
        json.dumps({**PAYLOAD, "extra": _deep(33)}).encode(),
        b'{"a": "' + b'\\"' * 20_000 + b'", "b": ' + b"[" * 40,  # escaped quotes, then depth
    ],
    ids=["brackets", "deep-field", "after-escaped-quotes"],
)
async def test_deep_json_is_400_with_one_log_line(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """JSON nested deeper than 32 levels is refused before parsing: 400, one line, no traceback."""

    async def send() -> int:
        async with endpoint.session.post(
            endpoint.hook(), data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert "deeper than 32" in (await response.json())["error"]
            return response.status

    reason = await _refused_once(endpoint, caplog, send)
    assert reason == "JSON nested deeper than 32 levels"


async def test_nesting_within_the_bound_and_brackets_in_strings_are_stored(
    endpoint: Endpoint,
) -> None:
    """32 levels are accepted, and brackets inside JSON strings are text, not nesting."""
    payload = {**PAYLOAD, "extra": _deep(31), "note": "[{" * 100 + '\\"['}
    status, body = await endpoint.post(payload)
    assert (status, body) == (200, {"result": "stored"})


async def test_deep_query_keys_are_400_with_one_log_line(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A GET whose key is `a[b]` 2,000 levels deep is 400 with one log line, no traceback."""
    # Brackets sent as they are, and 2,000 levels, keep the request line inside aiohttp's 8,190
    # bytes (a longer line is refused by aiohttp itself, before the endpoint).
    query = urlencode(PAYLOAD) + "&a" + "[b]" * 2000 + "=1"
    url = URL(f"{endpoint.hook()}?{query}", encoded=True)

    async def send() -> int:
        async with endpoint.session.get(url) as response:
            return response.status

    reason = await _refused_once(endpoint, caplog, send)
    assert reason == "a[b][b][b][b][b][b][b][b][b...: key nested deeper than 32 levels"


async def test_deep_bracketed_keys_in_a_json_body_are_400_without_verification(
    start_endpoint: StartEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A flat JSON key nested 2,500 levels by brackets is refused when the payload is read."""
    ep = await start_endpoint({"webhooks": {"verify": False}})
    payload = {**PAYLOAD, "a" + "[b]" * 2500: "1"}

    async def send() -> int:
        async with ep.session.post(ep.hook(), json=payload) as response:
            return response.status

    reason = await _refused_once(ep, caplog, send)
    assert reason.endswith("key nested deeper than 32 levels")


async def test_without_verification_the_payload_must_be_a_whole_fax(
    start_endpoint: StartEndpoint,
) -> None:
    """With webhooks.verify off the payload is acted upon, so an incomplete one is refused."""
    ep = await start_endpoint({"webhooks": {"verify": False}})
    partial = {k: v for k, v in PAYLOAD.items() if k != "to"}
    status, body = await ep.post(partial)
    assert status == 400
    assert body["error"] == "missing to"
    status, _body = await ep.post(PAYLOAD)
    assert status == 200


async def test_a_store_failure_is_500_so_the_carrier_retries(endpoint: Endpoint) -> None:
    """When the event cannot be committed the answer is 500, and a retry later is stored."""
    other = sqlite3.connect(endpoint.db.path)
    other.execute("ALTER TABLE events RENAME TO events_away")
    other.commit()
    try:
        with capture_logs() as logs:
            status, _body = await endpoint.post(PAYLOAD)
        assert status == 500
        assert "webhook.store_failed" in [e["event"] for e in logs]
        assert endpoint.wakes == []
    finally:
        other.execute("ALTER TABLE events_away RENAME TO events")
        other.commit()
        other.close()
    status, body = await endpoint.post(PAYLOAD)
    assert (status, body) == (200, {"result": "stored"})


async def test_webhook_id_is_bound_in_the_log_context(endpoint: Endpoint) -> None:
    """Every line written while handling one webhook carries its webhook id and fax id."""
    with capture_logs(processors=[merge_contextvars]) as logs:
        await endpoint.post(PAYLOAD)
    [line] = [e for e in logs if e["event"] == "webhook.received"]
    assert line["carrier_id"] == FAX_ID
    assert len(line["webhook_id"]) == 12


async def _raw_exchange(url: str, request: bytes, *, then: bytes = b"", pause: float = 0) -> bytes:
    """Send `request` on a fresh connection (and `then` after `pause`); all the server says."""
    host, port = URL(url).host, URL(url).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        if then:
            await asyncio.sleep(pause)
            writer.write(then)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_an_over_long_request_line_is_400_and_one_line_without_a_traceback(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Request lines past aiohttp's 8,190 bytes: 400, one `http.bad_request` line for the first
    and none for the next ones (a summary later), no traceback."""
    line = b"GET /webhooks/fax/" + TOKEN.encode() + b"?a=" + b"x" * 9000 + b" HTTP/1.1\r\n"
    with capture_logs() as logs:
        for _ in range(3):
            answer = await _raw_exchange(endpoint.url, line + b"Host: x\r\n\r\n")
            assert answer.split(b" ", 2)[1] == b"400"
    [logged] = [e for e in logs if e["event"].startswith("http.")]
    assert (logged["event"], logged["kind"], logged["status"]) == (
        "http.bad_request",
        "LineTooLong",
        400,
    )
    assert TOKEN not in str(logged)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_a_body_sent_too_slowly_is_408_and_the_connection_closed(
    start_endpoint: StartEndpoint,
) -> None:
    """A webhook body trickled in past http.body_timeout_seconds: 408, closed, nothing stored."""
    ep = await start_endpoint({"http": {"body_timeout_seconds": 0.5}})
    body = json.dumps(PAYLOAD).encode()
    head = (
        f"POST /webhooks/fax/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = await _raw_exchange(ep.url, head + body[:10], then=body[10:], pause=2)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    assert await ep.events() == []
    assert ep.counted == ["too_slow"]
