"""How many SMTP sessions may be open: per client and in total (Postfix's
smtpd_client_connection_count_limit and process limit).

A connection past a cap is answered `421 4.7.0` in place of the greeting and closed at once, so
it holds its descriptor for an instant only. Refusals are tallied (gateway.ops.flood): one line
at the first, one with the counts each minute, however many thousands come.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from gateway.ops.flood import Tally
from gateway.smtp.policy import IPAddress


def client_key(ip: IPAddress | None) -> str:
    """The unit a client is counted in: its IPv4 address, or its IPv6 /64 (the block one
    subscriber gets, so rotating addresses within it does not help)."""
    if ip is None:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ClientCounts:
    """What is held per client key and in total, against a cap on each: `refusal` says
    whether one more may be taken, `take` and `release` count it. The caps may change while
    some are held (a reload): those stay held until released, new ones are refused until
    enough are given back."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: Counter[str] = Counter()

    def reconfigure(self, max_total: int, max_per_client: int) -> None:
        """New caps from the next `refusal` on."""
        self.max_total = max_total
        self.max_per_client = max_per_client

    def refusal(self, key: str) -> str | None:
        """None if one more of `key` may be taken now; else which cap is reached ("total" or
        "per_client")."""
        if self.total >= self.max_total:
            return "total"
        if self._per_client[key] >= self.max_per_client:
            return "per_client"
        return None

    def take(self, key: str) -> None:
        self.total += 1
        self._per_client[key] += 1

    def release(self, key: str) -> None:
        self.total -= 1
        self._per_client[key] -= 1
        if self._per_client[key] <= 0:
            del self._per_client[key]

    def count(self, key: str) -> int:
        return self._per_client[key]


class ConnectionLimits(ClientCounts):
    """Open sessions per client key and in total; `admit` before a session, `release` after."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        super().__init__(max_total, max_per_client)
        self.refusals = Tally("smtp.connection_refused", "smtp.connections_refused")

    def admit(self, key: str) -> str | None:
        """None if a session of `key` may start (and count it); else why not."""
        why = self.refusal(key)
        if why is None:
            self.take(key)
            return None
        self.refusals.add(
            why,
            client=key,
            open=self.total,
            open_for_client=self.count(key),
            limit=self.max_total if why == "total" else self.max_per_client,
        )
        return why
