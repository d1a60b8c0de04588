"""The sandbox's outgoing fax webhooks: POST with a JSON body, or GET with query parameters.

Like a real carrier, a webhook that is not answered 2xx (or not answered at all) is sent again
after a growing, jittered delay, a bounded number of times. Every attempt is recorded with the
answer's status so tests and people can see what the gateway said.

For GET the documentation does not say how nested fields are written; we use the bracket form
of common web frameworks: `error[code]=5109&links[0][media]=https://...`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.log import get_logger
from gateway.queue.backoff import backoff_delay
from gateway.sandbox.state import SandboxFax, SandboxState, iso, now

log = get_logger(__name__)


def query_items(payload: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a webhook payload into query parameters in bracket form."""
    items: list[tuple[str, str]] = []
    for key, value in payload.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, dict):
            items += query_items(value, name)
        elif isinstance(value, list):
            for index, element in enumerate(value):
                element_name = f"{name}[{index}]"
                if isinstance(element, dict):
                    items += query_items(element, element_name)
                else:
                    items.append((element_name, str(element)))
        elif value is not None:
            items.append((name, str(value)))
    return items


class WebhookSender:
    def __init__(self, state: SandboxState, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.session = session

    def send(self, fax: SandboxFax, reason: str = "final") -> bool:
        """Send the fax's webhook in the background; False when no webhook URL is set."""
        settings = self.state.settings
        if not settings.webhook_url:
            log.info("sandbox.webhook_skipped", carrier_id=fax.id, reason="no webhook URL set")
            return False
        payload = fax.webhook_json()  # the state now, not when a retry happens to run
        self.state.spawn(
            self._deliver(payload, settings.webhook_url, settings.webhook_method, reason),
            name=f"sandbox-webhook-{fax.id}",
        )
        return True

    async def _deliver(self, payload: dict[str, Any], url: str, method: str, reason: str) -> None:
        settings = self.state.settings
        for attempt in range(1, settings.webhook_attempts + 1):
            entry: dict[str, Any] = {
                "fax_id": payload["id"],
                "status": payload["status"],
                "direction": payload["direction"],
                "reason": reason,
                "attempt": attempt,
                "method": method,
                "url": url,
                "time": iso(now()),
                "payload": payload,
                "response_status": None,
                "error": None,
                "dropped": False,
            }
            if attempt == 1 and self.state.take_webhook_drop():
                # A lost webhook: the gateway must notice through reconciliation.
                entry["dropped"] = True
                self.state.record_webhook(entry)
                log.info("sandbox.webhook_dropped", carrier_id=payload["id"])
                return
            try:
                async with self.session.request(
                    method,
                    url,
                    json=payload if method == "POST" else None,
                    params=query_items(payload) if method == "GET" else None,
                    timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout),
                ) as response:
                    await response.read()
                    entry["response_status"] = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.state.record_webhook(entry)
            status = entry["response_status"]
            log.info(
                "sandbox.webhook_sent",
                carrier_id=payload["id"],
                status=payload["status"],
                attempt=attempt,
                response_status=status,
                error=entry["error"],
            )
            if status is not None and 200 <= status < 300:
                return
            if attempt < settings.webhook_attempts:
                delay = backoff_delay(
                    attempt, settings.webhook_min_delay, settings.webhook_max_delay
                )
                try:
                    await asyncio.wait_for(self.state.stopping.wait(), delay)
                    return  # the sandbox is stopping
                except TimeoutError:
                    pass
        log.warning("sandbox.webhook_gave_up", carrier_id=payload["id"], attempts=attempt)
