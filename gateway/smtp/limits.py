"""The daily limit: how many faxes one sender, or one login, may send in 24 hours.

Counted at RCPT, from the store (faxes of committed jobs, cancelled ones not counted) plus the
numbers the sender's other open SMTP transactions already took, so parallel sessions each under
the limit cannot pass it together. A login that is not an address may name any allowed sender:
its own count keeps one stolen password from faxing without end under ever new senders.

Callers hold `lock` from the check until the number is taken into the transaction, and while
they close a transaction whose job was committed. A job being committed (its row may or may
not be in the store yet: store/commit.py batches the commits) is counted from memory only: the
check leaves its id out of the store's count until the transaction is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.smtp import replies
from gateway.smtp.policy import Refusal
from gateway.smtp.replies import Reason
from gateway.store import Database
from gateway.store.jobs import faxes_sent_by_user_since, faxes_sent_since

DAY_SECONDS = 86400


@dataclass(frozen=True)
class OverLimit:
    refusal: Refusal
    sent: int  # faxes counted against the limit, for the log


class DailyLimit:
    """faxes_per_sender_per_day for one SMTP server, shared by all its sessions."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.lock = asyncio.Lock()

    async def check(
        self,
        *,
        sender: str,
        user: str | None,
        limit: int,
        open_for_sender: Callable[[str], int],
        open_for_user: Callable[[str], int],
        committing: Collection[str] = (),
    ) -> OverLimit | None:
        """Whether one more fax for `sender` (logged in as `user`) passes `limit`; call it
        holding `lock`. `open_for_*` count the numbers of open transactions, this one's too;
        `committing` are the job ids of the open ones whose rows are being committed."""
        since = time.time() - DAY_SECONDS
        lowered = sender.lower()
        sent = await self.db.run(faxes_sent_since, lowered, since, committing)
        sent += open_for_sender(lowered)
        reply = replies.daily_limit(sender, limit)
        if sent < limit and user is not None and user.lower() != lowered:
            sent = await self.db.run(faxes_sent_by_user_since, user, since, committing)
            sent += open_for_user(user)
            reply = replies.daily_limit_user(user, limit)
        if sent >= limit:
            return OverLimit(Refusal(Reason.DAILY_LIMIT, reply), sent)
        return None
