"""The daemon: every server and worker of the gateway on one event loop that we own.

Start order: store, HTTP, SMTP, workers; then READY=1. Stop order is the reverse, after
STOPPING=1: no new SMTP sessions, DATA in progress finishes, workers reach a safe point, the
store is closed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol

from gateway import log, sdnotify
from gateway.config import Config
from gateway.httpd import HttpServer, create_app
from gateway.store import Database

logger = log.get_logger(__name__)


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    """All parts of one running gateway, built from its configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        config.data.dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.data.dir / "store.db")
        self.http_app = create_app(client_max_size=max(config.http.max_webhook_bytes, 1024**2))
        self.http = HttpServer(self.http_app, config.http.listen)
        self.components: list[Component] = []

    async def start(self) -> None:
        await self.db.open()
        await self.http.start()
        for component in self.components:
            await component.start()

    async def stop(self) -> None:
        for component in reversed(self.components):
            try:
                await asyncio.wait_for(component.stop(), self.config.queue.shutdown_timeout_seconds)
            except Exception:
                logger.exception("daemon.stop_failed", component=type(component).__name__)
        await self.http.stop()
        self.db.close()


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 after a clean stop."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    gateway = Gateway(config)
    await gateway.start()
    sdnotify.notify("READY=1\nSTATUS=accepting mail and webhooks")
    logger.info("daemon.ready", smtp=str(config.smtp.listen), http=str(config.http.listen))

    watchdog = None
    interval = sdnotify.watchdog_interval()
    if interval:
        watchdog = asyncio.create_task(_watchdog(interval))

    await stopping.wait()
    logger.info("daemon.stopping")
    sdnotify.notify("STOPPING=1")
    if watchdog:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    await gateway.stop()
    logger.info("daemon.stopped")
    return 0


async def _watchdog(interval: float) -> None:
    # Pings come from the loop itself, so a blocked loop stops them and systemd restarts us.
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
