"""The life of a sandbox fax, from the POST (or an inbound call) to its final webhook.

Outbound: `queued` while the document is fetched and checked (a bad document fails right
there, as the carrier reports document errors without dialing), then `delivering` after the
configured delay, then `delivered` or `failed` after another delay, then one webhook.
Inbound: `receiving`, then `received` after the delay, then the webhook with `links[].media`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp

from gateway.log import get_logger
from gateway.sandbox import documents
from gateway.sandbox.settings import SECONDS_PER_PAGE
from gateway.sandbox.state import SandboxFax, SandboxState
from gateway.sandbox.webhooks import WebhookSender

log = get_logger(__name__)

DELIVERED = "delivered"
RECEIVED = "received"
FAILED = "failed"
QUEUED = "queued"
DELIVERING = "delivering"
RECEIVING = "receiving"

FINAL_STATUSES = frozenset({DELIVERED, RECEIVED, FAILED})


class Lifecycle:
    def __init__(
        self, state: SandboxState, session: aiohttp.ClientSession, webhooks: WebhookSender
    ) -> None:
        self.state = state
        self.session = session
        self.webhooks = webhooks
        self._running: dict[str, asyncio.Task[None]] = {}

    def start_outbound(self, fax: SandboxFax) -> None:
        self._start(fax, self._outbound(fax))

    def start_inbound(self, fax: SandboxFax) -> None:
        self._start(fax, self._inbound(fax))

    def finish(self, fax: SandboxFax, error_code: int | None) -> None:
        """End the fax now (control API): delivered/received, or failed with `error_code`."""
        task = self._running.pop(fax.id, None)
        if task is not None:
            task.cancel()
        if error_code is None:
            self._succeed(fax, fax.document.pages if fax.document else 1)
        else:
            self._fail(fax, error_code)
        self.webhooks.send(fax)

    def _start(self, fax: SandboxFax, coro: Coroutine[Any, Any, None]) -> None:
        task = self.state.spawn(coro, name=f"sandbox-fax-{fax.id}")
        self._running[fax.id] = task
        task.add_done_callback(lambda _task: self._running.pop(fax.id, None))

    async def _pause(self) -> None:
        delay = self.state.settings.delay
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            # Still yield, so callers see the intermediate status as the carrier shows it.
            await asyncio.sleep(0)

    async def _outbound(self, fax: SandboxFax) -> None:
        settings = self.state.settings
        assert fax.url is not None
        try:
            data, fax.download = await documents.fetch(
                self.session,
                fax.url,
                max_bytes=settings.max_download_bytes,
                seconds=settings.download_timeout,
            )
            fax.document = await asyncio.to_thread(documents.inspect, data)
        except documents.DocumentRefused as exc:
            if exc.record is not None:
                fax.download = exc.record
            log.info(
                "sandbox.document_refused", carrier_id=fax.id, code=exc.code, reason=exc.reason
            )
            self._fail(fax, exc.code)
            self.webhooks.send(fax)
            return
        # The documented answers show 0 pages and 0 seconds until the fax is done.
        fax.pages, fax.duration = 0, 0
        self.state.touch()
        await self._pause()
        fax.set_status(DELIVERING)
        self.state.touch()
        await self._pause()
        code = self.state.take_fax_failure(fax.to)
        if code is None:
            code = settings.outcome_for(fax.to)
        if code is not None:
            self._fail(fax, code)
        else:
            self._succeed(fax, fax.document.pages)
        self._running.pop(fax.id, None)
        self.webhooks.send(fax)

    async def _inbound(self, fax: SandboxFax) -> None:
        await self._pause()
        self._succeed(fax, fax.document.pages if fax.document else 1)
        self._running.pop(fax.id, None)
        self.webhooks.send(fax)

    def _succeed(self, fax: SandboxFax, pages: int) -> None:
        fax.pages = pages
        fax.duration = pages * SECONDS_PER_PAGE
        fax.error_code = None
        fax.set_status(RECEIVED if fax.direction == "inbound" else DELIVERED)
        self.state.touch()
        log.info("sandbox.fax_done", carrier_id=fax.id, status=fax.status, pages=pages)

    def _fail(self, fax: SandboxFax, code: int) -> None:
        fax.pages, fax.duration = 0, 0
        fax.error_code = code
        fax.set_status(FAILED)
        self.state.touch()
        log.info("sandbox.fax_done", carrier_id=fax.id, status=fax.status, error_code=code)
