"""The document-check slots of DATA: `smtp.max_concurrent_data` messages read and checked at
once, at most `smtp.max_concurrent_data_per_ip` of them for one client (the key of
gateway.smtp.connections.client_key: an IPv4 address, an IPv6 /64), so one client with a few
sessions in DATA cannot hold every slot while other senders get 451.

A DATA past either is refused at once (451 4.3.2, the client retries), never queued: a
queued message would hold its session and its spooled bytes while it waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from gateway.smtp.connections import ClientCounts


class DocumentSlots(ClientCounts):
    """Slots held per client and in total (counts, not an asyncio.Semaphore: nothing ever
    waits for a slot, and a SIGHUP can change both caps while slots are held; a semaphore's
    size is fixed at its making). Slots held at a reload stay held until their message is
    done."""

    @contextlib.asynccontextmanager
    async def held(self, client: str) -> AsyncIterator[None]:
        """A slot for a message of `client` while the block runs (ask `refusal` first: this
        takes one whatever the caps say, and never waits)."""
        self.take(client)
        try:
            yield
        finally:
            self.release(client)

    def held_by(self, client: str) -> int:
        return self.count(client)
