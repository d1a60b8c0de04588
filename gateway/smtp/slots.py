"""The document-check slots of DATA: `smtp.max_concurrent_data` messages read and checked at
once, at most `smtp.max_concurrent_data_per_ip` of them for one client (the key of
gateway.smtp.connections.client_key: an IPv4 address, an IPv6 /64), so one client with a few
sessions in DATA cannot hold every slot while other senders get 451.

A DATA past either is refused at once (451 4.3.2, the client retries), never queued: a
queued message would hold its session and its spooled bytes while it waits.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class DocumentSlots:
    # Counts, not an asyncio.Semaphore: nothing ever waits for a slot, and a SIGHUP can change
    # both caps while slots are held (a semaphore's size is fixed at its making; before, a
    # reload said it had applied smtp.max_concurrent_data[_per_ip] and kept the old ones).
    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._in_use = 0
        self._held: Counter[str] = Counter()

    def reconfigure(self, total: int, per_client: int) -> None:
        """New caps from the next DATA on; slots held now stay held until their message is
        done (below a lowered cap, new ones are refused until enough are given back)."""
        self.total = total
        self.per_client = per_client

    def refusal(self, client: str) -> str | None:
        """None if a message of `client` may take a slot now; else which cap is reached
        ("total" or "per_client")."""
        if self._in_use >= self.total:
            return "total"
        if self._held[client] >= self.per_client:
            return "per_client"
        return None

    @contextlib.asynccontextmanager
    async def held(self, client: str) -> AsyncIterator[None]:
        """A slot for a message of `client` while the block runs (ask `refusal` first: this
        takes one whatever the caps say, and never waits)."""
        self._in_use += 1
        self._held[client] += 1
        try:
            yield
        finally:
            self._in_use -= 1
            self._held[client] -= 1
            if self._held[client] <= 0:
                del self._held[client]

    def held_by(self, client: str) -> int:
        return self._held[client]
