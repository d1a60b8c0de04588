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


class ConnectionLimits:
    """Open sessions per client key and in total; `admit` before a session, `release` after."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: Counter[str] = Counter()
        self.refusals = Tally("smtp.connection_refused", "smtp.connections_refused")

    def admit(self, key: str) -> str | None:
        """None if a session of `key` may start (and count it); else why not."""
        if self.total >= self.max_total:
            why = "total"
        elif self._per_client[key] >= self.max_per_client:
            why = "per_client"
        else:
            self.total += 1
            self._per_client[key] += 1
            return None
        self.refusals.add(
            why,
            client=key,
            open=self.total,
            open_for_client=self._per_client[key],
            limit=self.max_total if why == "total" else self.max_per_client,
        )
        return why

    def release(self, key: str) -> None:
        self.total -= 1
        self._per_client[key] -= 1
        if self._per_client[key] <= 0:
            del self._per_client[key]

    def count(self, key: str) -> int:
        return self._per_client[key]
