"""The daily limit: how many faxes one sender, or one login, may send in 24 hours.

Counted at RCPT, from the store (faxes of committed jobs, cancelled ones not counted) plus the
numbers the sender's other open SMTP transactions already took, so parallel sessions each under
the limit cannot pass it together. A login that is not an address may name any allowed sender:
its own count keeps one stolen password from faxing without end under ever new senders.

The open transactions are the SMTP handler's (`OpenWork`, given when the limit is made); every
other way in (the status pages' send form) checks through the same object and so counts them
too. Callers hold `lock` from the check until the number is taken into the transaction, and while
they close a transaction whose job was committed. A job being committed (its row may or may
not be in the store yet: store/commit.py batches the commits) is counted from memory only: the
check leaves its id out of the store's count until the transaction is closed.

Nodes sharing a store (store/postgres.py) share the store's count, not their open
transactions: each counts its own, so parallel sessions on two nodes can together pass a
sender's limit by the faxes of the other node's transactions still open (a few, for as long as
a DATA takes); once committed, every node counts them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from gateway.smtp import replies
from gateway.smtp.policy import Refusal
from gateway.smtp.replies import Reason
from gateway.store import Database
from gateway.store.jobs import faxes_sent_by_user_since, faxes_sent_since

DAY_SECONDS = 86400

# A count of the store's (store/jobs.py): faxes of `key` since a time, some jobs left out.
_Count = Callable[[sqlite3.Connection, str, float, Collection[str]], int]


@dataclass(frozen=True)
class OverLimit:
    refusal: Refusal
    sent: int  # faxes counted against the limit, for the log


class OpenWork(Protocol):
    """Faxes taken by transactions still open, not yet (or not surely) in the store."""

    def open_for_sender(self, sender: str) -> int:
        """Numbers the open transactions of `sender` (lower case) took."""
        ...

    def open_for_user(self, user: str) -> int:
        """Numbers the open transactions of login `user` took."""
        ...

    def committing(self) -> Collection[str]:
        """Job ids of the open transactions whose rows are being committed."""
        ...


class _NoOpenWork:
    def open_for_sender(self, sender: str) -> int:
        return 0

    def open_for_user(self, user: str) -> int:
        return 0

    def committing(self) -> Collection[str]:
        return ()


class DailyLimit:
    """faxes_per_sender_per_day for one gateway, shared by all its SMTP sessions and its
    status pages; `open_work` are the SMTP handler's open transactions."""

    def __init__(self, db: Database, open_work: OpenWork | None = None) -> None:
        self.db = db
        self.open_work: OpenWork = open_work or _NoOpenWork()
        self.lock = asyncio.Lock()

    async def check(self, *, sender: str, user: str | None, limit: int) -> OverLimit | None:
        """Whether one more fax for `sender` (logged in as `user`) passes `limit`; call it
        holding `lock`. The numbers of open transactions count, the caller's own too.

        The store's count is read on its reader (`Database.read`): every session's RCPT waits
        for this lock, which must not be held while the read queues behind the store thread's
        commits. A job whose transaction was closed was committed before, so the reader sees it;
        one still being committed is counted from memory."""
        since = time.time() - DAY_SECONDS
        lowered = sender.lower()
        sent = await self._stored(faxes_sent_since, lowered, since)
        sent += self.open_work.open_for_sender(lowered)
        reply = replies.daily_limit(sender, limit)
        if sent < limit and user is not None and user.lower() != lowered:
            sent = await self._stored(faxes_sent_by_user_since, user, since)
            sent += self.open_work.open_for_user(user)
            reply = replies.daily_limit_user(user, limit)
        if sent >= limit:
            return OverLimit(Refusal(Reason.DAILY_LIMIT, reply), sent)
        return None

    async def _stored(self, count: _Count, key: str, since: float) -> int:
        """The store's count for `key`, the jobs of open transactions left out (they are
        counted from memory).

        A transaction's job starts being committed (its id in `committing`) without this
        lock, so one may start while the read is on its way, and its row may be committed
        before the read runs: read with the ids of before, that job would be counted twice,
        from the store and from memory, and a fax within the limit refused. So the count is
        read again, those ids left out too, until no commit started during the read. That
        ends: only transactions holding numbers commit, and numbers are taken under the
        lock the caller holds, so the transactions that can start are few and each starts
        once. A job whose transaction was closed is counted from the store only: it was
        committed before it was closed, and closed under the lock, so before this check."""
        excluded = frozenset(self.open_work.committing())
        while True:
            sent = await self.db.read(count, key, since, excluded)
            started = frozenset(self.open_work.committing()) - excluded
            if not started:
                return sent
            excluded |= started
