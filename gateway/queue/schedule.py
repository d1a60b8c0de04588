"""The one queue discipline: when an item is tried again, when it expires, when it is held.

Every queue (jobs, faxes, events, reports, inbound faxes, outbox mail) keeps three columns
for it in the store, so a restart resumes each item with its history intact:

- `attempts`: tries that ended in a deferral. `Schedule.retry` turns them into the due time
  of the next try (Postfix's deferred queue: doubling delay from queue.min_backoff_seconds to
  queue.max_backoff_seconds, with jitter), or None once queue.lifetime_seconds have passed
  since the item was created: the item has *expired*, one word for it in every queue. Inbound
  faxes are bounded by inbound.max_attempts instead (the carrier keeps the document, and an
  operator may requeue a dead letter), and cleanup retries a delete without end (nothing is
  lost by trying again); both still take their delays from `Schedule.delay`.
- `pickups`: claims that did not finish. Claiming counts one before the work starts and every
  handled outcome (done, deferred, failed) clears it, so pickups that reach queue.max_pickups
  mean the work crashed or killed the process that many times: the item is *held* for an
  operator instead of crash-looping (Mailman's shunt queue). gateway/store/claims.py is the
  one copy of that rule in SQL.
- `next_attempt_at`: when the item is due. Workers sleep until the earliest one
  (gateway/queue/runner.py), so a deferred item is tried when it is due, not at the next scan.

The words, the same in states, log events and metrics:
    deferred  tried, failed for now, due again later
    expired   its lifetime ran out while it was being retried
    held      its work was interrupted max_pickups times: an operator looks
    failed    refused for good (a 5xx, a 422, a document that can never be faxed)
"""

from __future__ import annotations

import errno
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import QueueConfig
from gateway.queue.backoff import Random, backoff_delay

Clock = Callable[[], float]

# Items a stage claims per pickup, where each claim's items are worked on one by one (submit:
# each POST slot claims its own). Claiming counts a pickup on each item, and a pickup that
# does not finish (a crash, a kill, a stop past its timeout) counts toward holding the item for
# an operator: claimed ten at a time, an interruption during the first would charge the nine
# not even started, and a few restarts during a slow carrier would hold a whole backlog. A
# stage that works on a batch at once claims it with claims.claim_together instead (prepare,
# upload, events): an item interrupted before is claimed alone, so only the culprit is held.
CLAIM_BATCH = 1

# The words of the discipline (see the module docstring), for log events and metric labels.
DEFERRED = "deferred"
EXPIRED = "expired"
HELD = "held"
FAILED = "failed"


@dataclass(frozen=True)
class Schedule:
    """Postfix's deferred-queue rule, with the clock every queue's worker and store share."""

    queue: QueueConfig
    clock: Clock = time.time
    rng: Random = field(default=random, compare=False)

    @property
    def max_pickups(self) -> int:
        return self.queue.max_pickups

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones (at least 1)."""
        return backoff_delay(
            max(attempts, 1),
            self.queue.min_backoff_seconds,
            self.queue.max_backoff_seconds,
            self.rng,
        )

    def expires_at(self, created_at: float) -> float:
        return created_at + self.queue.lifetime_seconds

    def expired(self, created_at: float) -> bool:
        return self.clock() >= self.expires_at(created_at)

    def retry(self, attempts: int, created_at: float) -> float | None:
        """When to try again after `attempts` failed tries; None if the item has expired.

        The last try happens when the lifetime ends, not up to max_backoff_seconds after it.
        """
        now = self.clock()
        expires = self.expires_at(created_at)
        if now >= expires:
            return None
        return now + min(self.delay(attempts), expires - now)

    def lifetime_text(self) -> str:
        hours = self.queue.lifetime_seconds / 3600
        return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"


# errno values that say the machine, not the item, is the problem: a full disk or quota, no file
# descriptors or memory left. Retrying later helps; holding the item for an operator does not.
_RESOURCE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}
)


def resource_error(exc: BaseException) -> bool:
    """Whether `exc` is a shortage of a resource (disk, file descriptors, memory, a store
    locked by another process): transient, so the item is deferred and no pickup is charged."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "full" in text or "busy" in text
    return False


def crash_message(pickups: int, work: str) -> str:
    """The error a held item carries: what it was doing when it kept being interrupted."""
    return f"crashed {pickups} times while {work}; held for an operator"
