"""The documented REST API of the sandbox carrier: POST /faxes, GET /faxes, GET /faxes/{id}.

Errors use the documented body `{"status": "error", "message": ..., "error_id": ...}` with the
documented statuses: 401 for a missing or wrong key, 404 for an unknown fax or route (the
table says "URL and/or HTTP method", so a wrong method is a 404 too), 422 for invalid data.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.numbers import NumberError, parse_fax_number
from gateway.sandbox.lifecycle import QUEUED, Lifecycle
from gateway.sandbox.settings import API_PREFIX
from gateway.sandbox.state import SandboxState

STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("sandbox_lifecycle", Lifecycle)

# The documentation: "Defaults to 3."
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 10


def error_response(status: int, message: str) -> web.Response:
    return web.json_response(
        {"status": "error", "message": message, "error_id": str(uuid.uuid4())}, status=status
    )


def authorized(request: web.Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def add_routes(app: web.Application) -> None:
    app.router.add_post(API_PREFIX + "/faxes", create_fax)
    app.router.add_get(API_PREFIX + "/faxes", list_faxes)
    app.router.add_get(API_PREFIX + "/faxes/{fax_id}", get_fax)


async def create_fax(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(422, "invalid JSON body")
    if not isinstance(body, dict):
        return error_response(422, "the body must be a JSON object")
    problems: list[str] = []
    to = _number(body, "to", problems)
    from_ = _number(body, "from", problems)
    url = body.get("url")
    if url is None or url == "":
        problems.append("missing url")
    elif not isinstance(url, str) or not _is_http_url(url):
        problems.append("invalid url: must be an http or https URL")
    attempts = body.get("attempts", DEFAULT_ATTEMPTS)
    if (
        not isinstance(attempts, int)
        or isinstance(attempts, bool)
        or not 1 <= attempts <= MAX_ATTEMPTS
    ):
        problems.append(f"invalid attempts: must be a whole number from 1 to {MAX_ATTEMPTS}")
    if problems or to is None or from_ is None:
        return error_response(422, "; ".join(problems))
    fax = state.new_fax(
        direction="outbound", to=to, from_=from_, status=QUEUED, url=url, attempts=attempts
    )
    request.app[LIFECYCLE].start_outbound(fax)
    # The documented answer to a POST is 200 with the queued fax.
    return web.json_response(fax.api_json())


async def get_fax(request: web.Request) -> web.Response:
    fax = request.app[STATE].faxes.get(request.match_info["fax_id"])
    if fax is None:
        return error_response(404, "fax not found")
    return web.json_response(fax.api_json())


async def list_faxes(request: web.Request) -> web.Response:
    """Newest first, `page_size` per page. The cursor names the last fax shown, so faxes
    created while a client pages through do not shift the pages it has yet to read."""
    state = request.app[STATE]
    size = state.settings.page_size
    faxes = state.newest_first()
    cursor = request.query.get("next_page")
    if cursor:
        before = _decode_cursor(cursor)
        if before is None:
            return error_response(422, "invalid next_page")
        faxes = [fax for fax in faxes if fax.seq < before]
    else:
        page_text = request.query.get("page", "1")
        if not page_text.isdigit() or int(page_text) < 1:
            return error_response(422, "invalid page: must be a whole number from 1")
        faxes = faxes[(int(page_text) - 1) * size :]
    shown, rest = faxes[:size], faxes[size:]
    data: dict[str, Any] = {"page_size": size}
    if rest:
        data["next_page"] = _encode_cursor(shown[-1].seq)
    data["results"] = [fax.api_json() for fax in shown]
    return web.json_response(data)


def _number(body: dict[str, Any], key: str, problems: list[str]) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        problems.append(f"missing {key}")
        return None
    if not isinstance(value, str):
        problems.append(f"invalid {key}: must be a string")
        return None
    # E.164, with or without the '+' (the documentation shows both).
    text = value.strip()
    try:
        e164 = parse_fax_number(text if text.startswith("+") else "+" + text, strict=False)
    except NumberError as exc:
        problems.append(f"invalid {key}: {exc}")
        return None
    return e164.lstrip("+")


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": seq}).encode()).decode()


def _decode_cursor(cursor: str) -> int | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    before = data.get("before") if isinstance(data, dict) else None
    return before if isinstance(before, int) and not isinstance(before, bool) else None
