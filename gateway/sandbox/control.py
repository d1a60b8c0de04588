"""The sandbox's control API under /_sandbox: what tests and people use to steer and observe it.

    GET    /_sandbox                      summary: settings, scripted numbers, counts
    PATCH  /_sandbox/settings             change webhook_url, webhook_method, delay, page_size,
                                          outcomes, webhook_attempts, webhook_min_delay...
    POST   /_sandbox/faults               inject a fault (JSON, see below); GET lists, DELETE
                                          clears them
    GET    /_sandbox/requests             every API and media request with its answer status
    GET    /_sandbox/webhooks             every webhook attempt with the answer's status
    GET    /_sandbox/faxes[/{id}]         faxes with their history, document and download
    GET    /_sandbox/faxes/{id}/document  the document the sandbox fetched or was given
    POST   /_sandbox/faxes/{id}/webhook   send the fax's webhook (again) now
    POST   /_sandbox/faxes/{id}/finish    end the fax now: {} delivers, {"error_code": N} fails
    POST   /_sandbox/inbound?to=N&from=N  body = the document: an inbound fax arrives
    GET    /_sandbox/media/{id}/{token}   an inbound fax's media (the links[].media URL)
    GET    /_sandbox/changes?since=V&timeout=S   wait until something changes (long poll)
    POST   /_sandbox/reset                forget faxes, faults and logs

Faults: {"kind": "error", "count": N, "status": 500, "body": "json"|"text"|"empty"},
{"kind": "slow", "count": N, "seconds": D}, {"kind": "disconnect", "count": N},
{"kind": "drop_webhooks", "count": N}, {"kind": "fail_fax", "count": N, "error_code": 5109,
"to": "+12015550123"} (the next N outbound faxes to that number, or to any without "to", fail
with that code, then faxes go as scripted again: "busy twice, then through"); request faults
take optional "method", "path" (a path prefix, default /api/v1) and "when": "after" (the
request is carried out, then its answer is replaced by the error or a dropped connection).

No authentication: the sandbox is a local tool and listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from typing import Any

from aiohttp import web

from gateway.numbers import NumberError, parse_fax_number
from gateway.sandbox import documents
from gateway.sandbox.api import LIFECYCLE, STATE
from gateway.sandbox.lifecycle import RECEIVING
from gateway.sandbox.settings import CONTROL_PREFIX, SandboxSettings
from gateway.sandbox.state import ERROR_BODIES, FAULT_KINDS, SandboxFax, SandboxState
from gateway.sandbox.webhooks import WebhookSender

WEBHOOKS: web.AppKey[WebhookSender] = web.AppKey("sandbox_webhooks", WebhookSender)

# Settings the control API may change at run time.
_MUTABLE_SETTINGS = frozenset(
    {
        "webhook_url",
        "webhook_method",
        "delay",
        "page_size",
        "outcomes",
        "max_download_bytes",
        "download_timeout",
        "webhook_attempts",
        "webhook_min_delay",
        "webhook_max_delay",
        "webhook_timeout",
    }
)
_MAX_LONG_POLL = 30.0


def add_routes(app: web.Application) -> None:
    p = CONTROL_PREFIX
    app.router.add_get(p, summary)
    app.router.add_patch(p + "/settings", update_settings)
    app.router.add_post(p + "/faults", add_fault)
    app.router.add_get(p + "/faults", list_faults)
    app.router.add_delete(p + "/faults", clear_faults)
    app.router.add_get(p + "/requests", list_requests)
    app.router.add_get(p + "/webhooks", list_webhooks)
    app.router.add_get(p + "/faxes", list_faxes)
    app.router.add_get(p + "/faxes/{fax_id}", show_fax)
    app.router.add_get(p + "/faxes/{fax_id}/document", fax_document)
    app.router.add_post(p + "/faxes/{fax_id}/webhook", resend_webhook)
    app.router.add_post(p + "/faxes/{fax_id}/finish", finish_fax)
    app.router.add_post(p + "/inbound", create_inbound)
    app.router.add_get(p + "/media/{fax_id}/{token}", media)
    app.router.add_get(p + "/changes", changes)
    app.router.add_post(p + "/reset", reset)


def settings_json(settings: SandboxSettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["outcomes"] = dict(settings.outcomes)
    data.pop("api_key")
    return data


async def summary(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "settings": settings_json(state.settings),
            "faxes": len(state.faxes),
            "requests": len(state.requests),
            "webhooks": len(state.webhooks),
            # Fax walks and webhook deliveries still running: 0 means the sandbox is idle.
            "busy": len(state.tasks),
            "version": state.version,
        }
    )


async def update_settings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    changes = await _json_object(request)
    unknown = set(changes) - _MUTABLE_SETTINGS
    if unknown:
        raise _bad(f"unknown or fixed settings: {', '.join(sorted(unknown))}")
    if "outcomes" in changes and isinstance(changes["outcomes"], dict):
        changes["outcomes"] = {str(k): v for k, v in changes["outcomes"].items()}
    try:
        settings = state.update_settings(**changes)
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    return web.json_response(settings_json(settings))


async def add_fault(request: web.Request) -> web.Response:
    spec = await _json_object(request)
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise _bad(f"kind must be one of {', '.join(FAULT_KINDS)}")
    count = spec.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise _bad("count must be a whole number from 1")
    fault: dict[str, Any] = {"kind": kind, "remaining": count}
    if "status" in spec:
        if not isinstance(spec["status"], int) or not 100 <= spec["status"] <= 599:
            raise _bad("status must be an HTTP status")
        fault["status"] = spec["status"]
    if "body" in spec:
        if spec["body"] not in ERROR_BODIES:
            raise _bad(f"body must be one of {', '.join(ERROR_BODIES)}")
        fault["body"] = spec["body"]
    if "seconds" in spec:
        if not isinstance(spec["seconds"], int | float) or spec["seconds"] < 0:
            raise _bad("seconds must be a non-negative number")
        fault["seconds"] = float(spec["seconds"])
    if spec.get("method") is not None:
        fault["method"] = str(spec["method"]).upper()
    if spec.get("path") is not None:
        fault["path"] = str(spec["path"])
    if "when" in spec:
        if spec["when"] not in ("before", "after"):
            raise _bad("when must be 'before' or 'after'")
        fault["when"] = spec["when"]
    if kind == "fail_fax":
        code = spec.get("error_code")
        if not isinstance(code, int) or isinstance(code, bool):
            raise _bad("fail_fax needs an error_code (a number)")
        fault["error_code"] = code
        if spec.get("to") is not None:
            to = str(spec["to"])
            if not to.startswith("+") or not to[1:].isdigit():
                raise _bad("to must be E.164 like +12015550123")
            fault["to"] = to
    created = request.app[STATE].add_fault(**fault)
    return web.json_response(created.as_json(), status=201)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response([fault.as_json() for fault in request.app[STATE].faults])


async def clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.faults.clear()
    state.touch()
    return web.json_response([])


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].requests)


async def list_webhooks(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].webhooks)


async def list_faxes(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response([fax.control_json() for fax in state.newest_first()])


async def show_fax(request: web.Request) -> web.Response:
    return web.json_response(_fax(request).control_json())


async def fax_document(request: web.Request) -> web.Response:
    fax = _fax(request)
    if fax.document is None:
        raise web.HTTPNotFound(text="the fax has no document (yet)")
    return web.Response(body=fax.document.data, content_type=fax.document.content_type)


async def resend_webhook(request: web.Request) -> web.Response:
    fax = _fax(request)
    if not request.app[WEBHOOKS].send(fax, reason="resend"):
        raise _bad("no webhook URL is set")
    return web.json_response(fax.control_json(), status=202)


async def finish_fax(request: web.Request) -> web.Response:
    fax = _fax(request)
    spec = await _json_object(request) if request.can_read_body else {}
    code = spec.get("error_code")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise _bad("error_code must be a number")
    request.app[LIFECYCLE].finish(fax, code)
    return web.json_response(fax.control_json())


async def create_inbound(request: web.Request) -> web.Response:
    """An inbound fax arrives: to/from in the query, the document as the body."""
    state = request.app[STATE]
    to = _query_number(request, "to")
    from_ = _query_number(request, "from")
    data = await request.read()
    try:
        document = await asyncio.to_thread(documents.inspect, data)
    except documents.DocumentRefused as exc:
        raise _bad(f"the body is not a fax document: {exc.reason}") from None
    token = state.media_token()
    fax = state.new_fax(
        direction="inbound", to=to, from_=from_, status=RECEIVING, document=document
    )
    fax.media_token = token
    # The media URL is the sandbox's own, on the address the caller reached it by.
    fax.media_url = str(request.url.origin().with_path(f"{CONTROL_PREFIX}/media/{fax.id}/{token}"))
    request.app[LIFECYCLE].start_inbound(fax)
    return web.json_response(fax.control_json(), status=201)


async def media(request: web.Request) -> web.Response:
    """An inbound fax's file. Unauthenticated like a presigned URL: the token is the key."""
    fax = request.app[STATE].faxes.get(request.match_info["fax_id"])
    token = request.match_info["token"]
    if (
        fax is None
        or fax.document is None
        or fax.media_token is None
        or not hmac.compare_digest(token, fax.media_token)
    ):
        raise web.HTTPNotFound()
    return web.Response(body=fax.document.data, content_type=fax.document.content_type)


async def changes(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    try:
        since = int(request.query.get("since", "-1"))
        timeout = min(float(request.query.get("timeout", "10")), _MAX_LONG_POLL)
    except ValueError:
        raise _bad("since must be a number, timeout seconds") from None
    version = await state.changed_since(since, max(timeout, 0.0))
    return web.json_response({"version": version})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"version": request.app[STATE].version})


def _fax(request: web.Request) -> SandboxFax:
    fax = request.app[STATE].faxes.get(request.match_info["fax_id"])
    if fax is None:
        raise web.HTTPNotFound(text="no such fax")
    return fax


def _query_number(request: web.Request, key: str) -> str:
    text = request.query.get(key, "").strip()
    if not text:
        raise _bad(f"missing {key}")
    try:
        return parse_fax_number(text if text.startswith("+") else "+" + text, strict=False).lstrip(
            "+"
        )
    except NumberError as exc:
        raise _bad(f"invalid {key}: {exc}") from None


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise _bad("the body must be JSON") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    return data


def _bad(message: str) -> web.HTTPException:
    return web.HTTPUnprocessableEntity(text=message)
