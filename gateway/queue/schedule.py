"""What the stages share: their clock, their retry schedule and their lifetime rule."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import QueueConfig
from gateway.queue.backoff import backoff_delay

Clock = Callable[[], float]

# Items a stage claims per pickup. Claiming counts a pickup on each item, and a pickup that
# does not finish (a crash, a kill, a stop past its timeout) counts toward holding the item for
# an operator: claimed ten at a time, an interruption during the first would charge the nine
# not even started, and a few restarts during a slow carrier would hold a whole backlog.
CLAIM_BATCH = 1


@dataclass(frozen=True)
class Schedule:
    """Postfix's deferred-queue rule: doubling delay from min to max, until the lifetime ends."""

    queue: QueueConfig
    clock: Clock = time.time

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones (at least 1)."""
        return backoff_delay(
            max(attempts, 1), self.queue.min_backoff_seconds, self.queue.max_backoff_seconds
        )

    def expired(self, created_at: float) -> bool:
        return self.clock() - created_at > self.queue.lifetime_seconds

    def lifetime_text(self) -> str:
        hours = self.queue.lifetime_seconds / 3600
        return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
