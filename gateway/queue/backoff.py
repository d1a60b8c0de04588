"""Retrying transient failures: doubling delays with jitter, bounded by attempts and by time.

Two users share the arithmetic: stages of the durable queue schedule their next attempt with
`backoff_delay` (Postfix-style: minimum, doubling, maximum), and short in-process retries of a
single call (an HTTP request to the carrier) go through `retrying`. Only errors the caller calls
transient are retried; anything else surfaces at once. Tests switch retries off by passing a
policy with `attempts=1`, never by mocking.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# Largest exponent used: 2**62 times any sane minimum is far above every maximum, and a bigger
# one would overflow the float conversion.
_MAX_EXPONENT = 62

# Share of the (uncapped) delay added as jitter, and how far below the maximum a capped delay may
# fall: without a spread at the cap, every job that reached it would wake at the same moment.
_JITTER = 0.5
_CAP_SPREAD = 0.25


class Random(Protocol):
    """What the jitter needs of a random source (the `random` module; tests pass their own)."""

    def uniform(self, a: float, b: float) -> float: ...


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: Random = random) -> float:
    """Seconds to wait after failed attempt number `attempt` (counting from 1).

    The base doubles from `minimum` (attempt 1 waits about `minimum`); a random share of up to
    half the base is added, and the result never leaves [minimum, maximum]. Once the base reaches
    the maximum, delays spread over the top quarter below it instead of all landing on it.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if minimum < 0:
        raise ValueError(f"minimum delay must not be negative, got {minimum}")
    # A maximum below the minimum is a configuration slip; the minimum is the safer reading.
    maximum = max(maximum, minimum)
    base = minimum * 2.0 ** min(attempt - 1, _MAX_EXPONENT)
    low = max(minimum, min(base, maximum * (1 - _CAP_SPREAD)))
    high = min(base * (1 + _JITTER), maximum)
    if high <= low:
        return low
    return rng.uniform(low, high)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one operation.

    `attempts` counts the first try (1 = no retries); `deadline` is the total budget in seconds
    from the first try: no retry starts if its delay would end past it.
    """

    attempts: int
    min_delay: float
    max_delay: float
    deadline: float

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.min_delay < 0 or self.max_delay < 0 or self.deadline < 0:
            raise ValueError("delays and deadline must not be negative")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One try, no retries."""
        return cls(attempts=1, min_delay=0.0, max_delay=0.0, deadline=0.0)


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    operation: str = "operation",
    rng: Random = random,
) -> T:
    """Await `fn()`; on a transient error wait and call it again, within `policy`.

    The last error is raised unchanged when the attempts or the deadline are used up, and any
    error that is not transient is raised at once. Cancellation is never retried.
    """
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc) or attempt >= policy.attempts:
                raise
            delay = backoff_delay(attempt, policy.min_delay, policy.max_delay, rng)
            elapsed = time.monotonic() - started
            if elapsed + delay > policy.deadline:
                log.warning(
                    "retry.deadline",
                    operation=operation,
                    attempt=attempt,
                    elapsed=round(elapsed, 3),
                    error=str(exc),
                )
                raise
            log.warning(
                "retry.scheduled",
                operation=operation,
                attempt=attempt,
                delay=round(delay, 3),
                error=str(exc),
            )
            await asyncio.sleep(delay)
            attempt += 1
