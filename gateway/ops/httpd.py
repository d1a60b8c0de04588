"""The gateway's one HTTP server: webhooks, media, health and metrics share it.

Components add their routes to the application before it starts; `HttpServer` runs it on the
daemon's own loop with AppRunner/TCPSite.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import Address
from gateway.log import get_logger

log = get_logger(__name__)


async def healthz(_request: web.Request) -> web.Response:
    """The process is alive and its loop answers."""
    return web.json_response({"status": "ok"})


def create_app(client_max_size: int = 1024**2) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    def __init__(self, app: web.Application, listen: Address) -> None:
        self.app = app
        self.listen = listen
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.listen.port
        log.info("http.listening", host=self.listen.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
