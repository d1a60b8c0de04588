"""The gateway's one HTTP server: webhooks, media, health and metrics share it.

Components add their routes to the application before it starts; `HttpServer` runs it on the
daemon's own loop with AppRunner and a TCP site. Connections are capped, in total and per client
address (past either cap: 503 and closed, counted in a tally, not a line each), and idle ones
closed: aiohttp's keep-alive timer runs from the connection's start and from each answer, and
closes a connection that has not sent a complete request head by then, so one timeout bounds
both a slow head and an idle keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.config import Address
from gateway.log import get_logger
from gateway.ops import fds
from gateway.ops.flood import Tally
from gateway.smtp.connections import client_key
from gateway.smtp.policy import client_ip

log = get_logger(__name__)


async def healthz(_request: web.Request) -> web.Response:
    """The process is alive and its loop answers."""
    return web.json_response({"status": "ok"})


def create_app(client_max_size: int = 1024**2) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/healthz", healthz)
    return app


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\n"
    b"Connection: close\r\n\r\n"
)


def _refuse(transport: asyncio.BaseTransport) -> None:
    """A connection past a cap: 503 at once, then closed, whatever the client sends."""
    with contextlib.suppress(Exception):
        transport.write(_BUSY)  # type: ignore[attr-defined]
    transport.close()


def _client(transport: asyncio.BaseTransport | None) -> str:
    """The unit a client is counted in: as for SMTP sessions, its IPv4 address or IPv6 /64."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return client_key(client_ip(peer))


class _Gate(asyncio.Protocol):
    """Every new connection's first protocol: it hands the connection to aiohttp's request
    handler if the caps allow it, else refuses it. Both caps are checked here, once the
    connection's address is known (the factory is called without it, and for a whole burst of
    accepts before any of them is counted)."""

    def __init__(self, site: _CappedSite, server: web.Server) -> None:
        self._site = site
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = _client(transport)
        if not self._site.admit(self._server, client):
            _refuse(transport)
            return
        handler = self._server()
        self._site.admitted(handler, client)
        # The transport has not read anything yet: from here on aiohttp's handler gets it all.
        transport.set_protocol(handler)
        handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # Only a refused connection's bytes, sent before its close took effect.
        pass


class _CappedSite(web.TCPSite):
    """TCPSite whose connections past `max_connections` open connections, or past
    `max_per_client` from one client, are answered 503 and closed."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        max_connections: int,
        max_per_client: int,
    ):
        super().__init__(runner, host, port, reuse_address=True)
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.refusals = Tally("http.connection_refused", "http.connections_refused")
        # Each admitted connection's client key, worked out once at its admission: counting
        # them by parsing every open connection's address again cost ~8 us a connection per
        # accept (2 ms at 256 open, 23 ms at 3000: seconds of a burst's loop time). Entries of
        # connections aiohttp no longer lists are dropped now and then (admit).
        self._clients: dict[web.RequestHandler, str] = {}

    def admit(self, server: web.Server, client: str) -> bool:
        """May a new connection of `client` be served (else it is tallied as refused)?"""
        connections = server.connections
        if len(connections) >= self.max_connections:
            self.refusals.add("total", open=len(connections), limit=self.max_connections)
            return False
        if len(self._clients) > 2 * len(connections) + 64:
            self._clients = {h: self._clients[h] for h in connections if h in self._clients}
        cap = min(self.max_per_client, self.max_connections)
        if cap < self.max_connections:
            # Counted from aiohttp's own list, which cannot drift from the connections really
            # open; a key each from _clients, a dict lookup rather than an address parsed.
            clients = self._clients
            mine = sum(1 for handler in connections if clients.get(handler) == client)
            if mine >= cap:
                self.refusals.add("per_client", client=client, open=len(connections), limit=cap)
                return False
        return True

    def admitted(self, handler: web.RequestHandler, client: str) -> None:
        """`handler` serves an admitted connection of `client`."""
        self._clients[handler] = client

    async def start(self) -> None:
        # TCPSite.start with our factory in place of the runner's server (same attributes).
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Gate(self, server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, except for requests that do not parse.

    aiohttp answers a request line or header past its limits (8,190 bytes), a bad method or
    a broken head with 400 itself, and logs each with a traceback: noise a scanner can turn
    into megabytes of non-JSON log. Those become one tallied `http.bad_request` line (the
    first of each kind per minute, then a summary with counts); everything else aiohttp logs
    goes on as it was.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.bad_requests = Tally("http.bad_request", "http.bad_requests")

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            # Not the message: it quotes the request line, and with it a webhook's token.
            self.bad_requests.add(type(exc_info).__name__, status=exc_info.code)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpServer:
    def __init__(
        self,
        app: web.Application,
        listen: Address,
        *,
        max_connections: int = 256,
        max_connections_per_ip: int = 64,
        idle_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self.listen = listen
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.idle_timeout = idle_timeout
        self._runner: web.AppRunner | None = None
        self._site: _CappedSite | None = None
        self._log = _ServerLog()
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.idle_timeout,
            logger=self._log,
        )
        await self._runner.setup()
        cap = fds.cap(self.max_connections, fds.HTTP_SHARE, "http")
        self._site = _CappedSite(
            self._runner, self.listen.host, self.listen.port, cap, self.max_connections_per_ip
        )
        await self._site.start()
        self.port = self._site.port
        log.info(
            "http.listening",
            host=self.listen.host,
            port=self.port,
            max_connections=cap,
            max_connections_per_ip=min(self.max_connections_per_ip, cap),
        )

    def reconfigure(self, max_connections: int, max_connections_per_ip: int) -> None:
        """SIGHUP: the connection caps from the next connection on (connections already open
        above a lowered cap are not closed)."""
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        if self._site is not None:
            self._site.max_connections = fds.cap(max_connections, fds.HTTP_SHARE, "http")
            self._site.max_per_client = max_connections_per_ip

    async def stop(self) -> None:
        self._log.bad_requests.flush()
        if self._site is not None:
            self._site.refusals.flush()
            self._site = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
