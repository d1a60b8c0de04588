"""The carrier's webhook endpoint: check, store durably, answer; the events worker acts later.

`{http.public_url}/webhooks/fax/{http.webhook_token}` takes POST with a JSON body and GET with
query parameters (the carrier's documentation says it uses either). The token in the path is
the webhook's only password: a wrong or missing one answers 404, as if nothing were here.

The handler never talks to the carrier or the relay. It stores the event in `events` (unique on
fax id and status, so the carrier's retries of one event are stored once), answers 200 once the
row is committed (with the other writes of that moment: store/commit.py), and wakes the events
worker (which gives way while webhooks pour in: callbacks/intake.py). If the row cannot be
stored it answers 500, so the carrier tries again rather than the event being lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from gateway import log
from gateway.callbacks.intake import Intake
from gateway.carrier.models import MAX_NESTING, CarrierFax, PayloadError, unflatten_query
from gateway.config import Config
from gateway.ops.flood import Tally
from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.events import insert_event, normalize_status

logger = log.get_logger(__name__)

ROUTE = r"/webhooks/fax{rest:(/.*)?}"

# Bounds on what we store: a carrier fax id is a UUID and a status one word; anything far
# longer is not a webhook of this API.
MAX_ID_LENGTH = 200
MAX_STATUS_LENGTH = 64

# Results, as counted in metrics and logged.
STORED = "stored"
DUPLICATE = "duplicate"
BAD_TOKEN = "bad_token"
MALFORMED = "malformed"
TOO_LARGE = "too_large"
TOO_SLOW = "too_slow"
STORE_FAILED = "store_failed"


class WebhookMetrics(Protocol):
    """What the endpoint reports to metrics: one call per request, with its result."""

    def webhook_event(self, result: str) -> None: ...


# The answers of every accepted webhook, rendered once.
_STORED_BODY = json.dumps({"result": STORED}).encode()
_DUPLICATE_BODY = json.dumps({"result": DUPLICATE}).encode()


def _answer(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json", charset="utf-8")


class MalformedWebhook(ValueError):
    """The request is not a fax webhook; str() is the reason given in the 400 answer."""


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


def add_routes(
    app: web.Application,
    *,
    config: Config,
    db: Database,
    wake: Callable[[], None],
    metrics: WebhookMetrics | None = None,
    commits: GroupCommit | None = None,
    intake: Intake | None = None,
) -> WebhookEndpoint:
    """Add the webhook route (GET and POST) to `app`; the endpoint, whose `config` a reload
    replaces."""
    endpoint = WebhookEndpoint(
        config=config, db=db, wake=wake, metrics=metrics, commits=commits, intake=intake
    )
    app.router.add_route("POST", ROUTE, endpoint.handle)
    app.router.add_route("GET", ROUTE, endpoint.handle)
    return endpoint


class WebhookEndpoint:
    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        wake: Callable[[], None],
        metrics: WebhookMetrics | None = None,
        commits: GroupCommit | None = None,
        intake: Intake | None = None,
    ) -> None:
        self.config = config
        self.db = db
        # Events arriving together are committed together: one fsync, then each 200.
        self.commits = commits or GroupCommit(db)
        self.wake = wake
        self.metrics = metrics
        # Told of each stored event, so the events worker gives way to a flood of them.
        self.intake = intake
        self._token = config.http.webhook_token.get_secret_value().encode()
        # Anyone can send a wrong token, as fast as we answer: a line each would fill the log.
        self.bad_tokens = Tally("webhook.bad_token", "webhook.bad_tokens")

    async def handle(self, request: web.Request) -> web.Response:
        webhook_id = secrets.token_hex(6)
        with log.bound(webhook_id=webhook_id):
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.Response:
        rest = request.match_info.get("rest", "")
        given = rest[1:].encode() if rest.startswith("/") else b""
        # compare_digest takes the same time wherever the first difference is, so the token
        # cannot be guessed byte by byte from response times. The token itself is never logged.
        if not given or not hmac.compare_digest(given, self._token):
            self.bad_tokens.add(
                f"{request.method} {'wrong' if given else 'missing'}",
                client=request.remote,
                method=request.method,
                remote=request.remote,
                token_given=bool(given),
            )
            self._count(BAD_TOKEN)
            return web.json_response({"error": "not found"}, status=404)

        try:
            payload = await self._payload(request)
            carrier_id, status, direction = self._check(payload)
        except _TooSlow:
            # A body trickled in to hold the connection (and a slot of the HTTP cap) open.
            seconds = self.config.http.body_timeout_seconds
            logger.warning("webhook.too_slow", method=request.method, timeout=seconds)
            self._count(TOO_SLOW)
            response = web.json_response(
                {"error": f"body not received within {seconds:g} seconds"}, status=408
            )
            response.force_close()
            return response
        except _TooLarge:
            limit = self.config.http.max_webhook_bytes
            logger.warning("webhook.too_large", method=request.method, limit=limit)
            self._count(TOO_LARGE)
            return web.json_response({"error": f"body larger than {limit} bytes"}, status=413)
        except MalformedWebhook as exc:
            logger.warning("webhook.malformed", method=request.method, reason=str(exc))
            self._count(MALFORMED)
            return web.json_response({"error": str(exc)}, status=400)

        with log.bound(carrier_id=carrier_id):
            try:
                event_id = await self.commits.run(
                    insert_event, carrier_id, status, direction, payload, time.time()
                )
            except Exception:
                # 5xx makes the carrier deliver the webhook again later.
                logger.exception("webhook.store_failed", status=status)
                self._count(STORE_FAILED)
                return web.json_response({"error": "could not store the event"}, status=500)
            if event_id is None:
                logger.info("webhook.duplicate", status=status, direction=direction)
                self._count(DUPLICATE)
                return _answer(_DUPLICATE_BODY)
            logger.info(
                "webhook.received",
                event_id=event_id,
                status=status,
                direction=direction,
                method=request.method,
            )
            self._count(STORED)
            if self.intake is not None:
                self.intake.stored()
            self.wake()
            return _answer(_STORED_BODY)

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        limit = self.config.http.max_webhook_bytes
        if request.method == "GET":
            if len(request.query_string) > limit:
                raise _TooLarge
            # Nested fields arrive flattened (`error[code]`); stored nested, as a POST would be.
            try:
                return unflatten_query(request.query.items())
            except PayloadError as exc:
                raise MalformedWebhook(str(exc)) from None
        if request.content_length is not None and request.content_length > limit:
            raise _TooLarge
        if request.content.is_eof():
            # The whole body came with the head (a webhook's usually does): nothing to wait
            # for, so no timer to set and cancel.
            body = request.content.read_nowait()
            if len(body) > limit:
                raise _TooLarge
        else:
            try:
                async with asyncio.timeout(self.config.http.body_timeout_seconds):
                    body = await _read_limited(request, limit)
            except TimeoutError:
                raise _TooSlow from None
        if not body.strip():
            raise MalformedWebhook("empty body: expected a JSON object")
        if json_depth(body) > MAX_NESTING:
            raise MalformedWebhook(f"JSON nested deeper than {MAX_NESTING} levels")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MalformedWebhook("body is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedWebhook(f"expected a JSON object, got {type(data).__name__}")
        return data

    def _check(self, payload: Mapping[str, Any]) -> tuple[str, str, str]:
        """(fax id, status, direction) of a fax webhook, or MalformedWebhook."""
        kind = payload.get("type")
        if not isinstance(kind, str) or kind.strip().lower() != "fax":
            raise MalformedWebhook(f"type must be 'fax', got {_shown(kind)}")
        carrier_id = _text(payload, "id", MAX_ID_LENGTH)
        status = normalize_status(_text(payload, "status", MAX_STATUS_LENGTH))
        direction = payload.get("direction")
        direction = direction.strip().lower() if isinstance(direction, str) else ""
        if not self.config.webhooks.verify:
            # Without verification the payload is what the events worker acts upon, so it must
            # be a complete fax now; later it could only be dropped.
            try:
                CarrierFax.from_api(payload)
            except PayloadError as exc:
                raise MalformedWebhook(str(exc)) from None
        return carrier_id, status, direction or "unknown"

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_event(result)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or _TooLarge as soon as it passes `limit` (chunked bodies have no length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)


# A JSON string, or the rest of the body from an opening quote that is never closed. The
# alternatives cannot overlap and the repetition is possessive, so every byte is read once
# whatever the body (no backtracking over `\"\"\"...`).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_depth(body: bytes, *, stop_past: int = MAX_NESTING) -> int:
    """How deeply arrays and objects nest in a JSON text, counting no further than `stop_past`
    + 1 (a bound that json.loads, which recurses per level, does not have). Brackets inside
    strings are text; on text that is not JSON the answer is merely an upper bound."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_past:
                    break
        else:
            depth -= 1
    return deepest


def _text(payload: Mapping[str, Any], key: str, max_length: int) -> str:
    value = payload.get(key)
    if value is None:
        raise MalformedWebhook(f"missing {key}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedWebhook(f"{key} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise MalformedWebhook(f"{key} is empty")
    if len(text) > max_length:
        raise MalformedWebhook(f"{key} is longer than {max_length} characters")
    if not text.isprintable():
        raise MalformedWebhook(f"{key} contains control characters")
    return text


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
