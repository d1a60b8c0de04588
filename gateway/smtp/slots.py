"""The document-check slots of DATA: `smtp.max_concurrent_data` messages read and checked at
once, at most `smtp.max_concurrent_data_per_ip` of them for one client (the key of
gateway.smtp.connections.client_key: an IPv4 address, an IPv6 /64), so one client with a few
sessions in DATA cannot hold every slot while other senders get 451.

A DATA past either is refused at once (451 4.3.2, the client retries), never queued: a
queued message would hold its session and its spooled bytes while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class DocumentSlots:
    def __init__(self, total: int, per_client: int) -> None:
        self.total = asyncio.Semaphore(total)
        self.per_client = per_client
        self._held: Counter[str] = Counter()

    def refusal(self, client: str) -> str | None:
        """None if a message of `client` may take a slot now; else which cap is reached
        ("total" or "per_client")."""
        if self.total.locked():
            return "total"
        if self._held[client] >= self.per_client:
            return "per_client"
        return None

    @contextlib.asynccontextmanager
    async def held(self, client: str) -> AsyncIterator[None]:
        """A slot for a message of `client` while the block runs (ask `refusal` first: with
        none, this does not wait)."""
        self._held[client] += 1
        try:
            async with self.total:
                yield
        finally:
            self._held[client] -= 1
            if self._held[client] <= 0:
                del self._held[client]

    def held_by(self, client: str) -> int:
        return self._held[client]
