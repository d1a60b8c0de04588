"""The sandbox carrier as an aiohttp application, and a runner to serve it on any event loop.

`create_sandbox_app(settings)` builds the app: the documented API under /api/v1 (api.py), the
control API under /_sandbox (control.py), and one middleware that does what every request
needs: injected faults, bearer auth and the documented error JSON for the API, and a log entry
with the answer's status. `SandboxServer` runs it with AppRunner/TCPSite, so it can share a
loop with the gateway or run alone (`fax-gateway sandbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway.log import get_logger
from gateway.sandbox import api, control
from gateway.sandbox.api import LIFECYCLE, STATE, authorized, error_response
from gateway.sandbox.lifecycle import Lifecycle
from gateway.sandbox.settings import API_PREFIX, CONTROL_PREFIX, SandboxSettings
from gateway.sandbox.state import Fault, SandboxState, iso, now
from gateway.sandbox.webhooks import WebhookSender

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Control calls are not logged as requests (they are the observer, not the observed), except
# the media downloads, which are what the gateway does.
_MEDIA_PREFIX = CONTROL_PREFIX + "/media/"
# A request body shown in the log is cut here.
_LOGGED_BODY_BYTES = 4096


def create_sandbox_app(settings: SandboxSettings) -> web.Application:
    app = web.Application(middlewares=[_observe], client_max_size=1024**2 * 64)
    app[STATE] = SandboxState(settings)
    api.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client for downloads and webhooks, and the tasks, opened and closed together."""
    state = app[STATE]
    # trust_env stays off: the sandbox talks to URLs it is given, usually on localhost.
    async with aiohttp.ClientSession() as session:
        webhooks = WebhookSender(state, session)
        app[control.WEBHOOKS] = webhooks
        app[LIFECYCLE] = Lifecycle(state, session, webhooks)
        yield
        state.stopping.set()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    path = request.path
    is_api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
    observed = is_api or path.startswith(_MEDIA_PREFIX) or not path.startswith(CONTROL_PREFIX)
    if not observed:
        return await handler(request)
    entry: dict[str, Any] = {
        "time": iso(now()),
        "method": request.method,
        "path": path,
        "query": dict(request.query),
        "status": None,
        "fault": None,
    }
    if request.method == "POST" and is_api:
        entry["body"] = await _logged_body(request)
    try:
        response = await _serve(request, handler, state, is_api, entry)
        entry["status"] = response.status
        return response
    finally:
        state.record_request(entry)


async def _serve(
    request: web.Request,
    handler: Handler,
    state: SandboxState,
    is_api: bool,
    entry: dict[str, Any],
) -> web.StreamResponse:
    faults = state.take_faults(request.method, request.path)
    for fault in faults:
        if fault.kind == "slow":
            entry["fault"] = "slow"
            # Wakes early when the sandbox stops, so a slow answer never delays shutdown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.stopping.wait(), fault.seconds)
    failing = next((f for f in faults if f.kind in ("error", "disconnect")), None)
    if failing is not None and failing.when == "before":
        entry["fault"] = failing.kind
        return _fault_response(request, failing)

    if is_api and not authorized(request, state.settings.api_key):
        response: web.StreamResponse = error_response(401, "unauthorized")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not is_api:
                raise
            # The documentation's 404 covers a wrong URL and a wrong method alike.
            status = 404 if exc.status in (404, 405) else exc.status
            message = "not found" if status == 404 else (exc.reason or "error")
            response = error_response(status, message)

    if failing is not None:
        # The request was carried out; only its answer is lost or replaced.
        entry["fault"] = f"{failing.kind} after"
        return _fault_response(request, failing)
    return response


def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "disconnect":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=fault.status)
    if fault.body == "text":
        # What a proxy or load balancer in front of an API answers.
        return web.Response(
            status=fault.status,
            text="<html><body><h1>Service unavailable</h1></body></html>",
            content_type="text/html",
        )
    if fault.body == "empty":
        return web.Response(status=fault.status)
    return error_response(fault.status, "injected fault: internal server error")


async def _logged_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw[:_LOGGED_BODY_BYTES])
    except ValueError:
        return raw[:_LOGGED_BODY_BYTES].decode("utf-8", "replace")


class SandboxServer:
    """The sandbox on `host:port` (0 = any free port) of the running event loop."""

    def __init__(self, settings: SandboxSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.app = create_sandbox_app(settings)
        self._runner: web.AppRunner | None = None

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the gateway's `voxtelesys.base_url` should be."""
        return self.root_url + API_PREFIX

    @property
    def control_url(self) -> str:
        return self.root_url + CONTROL_PREFIX

    @property
    def state(self) -> SandboxState:
        return self.app[STATE]

    async def start(self) -> None:
        # A short shutdown grace: in-flight slow answers are cut rather than waited for.
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("sandbox.listening", url=self.root_url)

    async def stop(self) -> None:
        if self._runner is not None:
            self.state.stopping.set()
            await self._runner.cleanup()
            self._runner = None
