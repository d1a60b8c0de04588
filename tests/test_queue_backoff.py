"""Backoff arithmetic and the retry helper: doubling, jitter, caps, attempt and time bounds."""

from __future__ import annotations

import random
import time

import pytest

from gateway.queue.backoff import RetryPolicy, backoff_delay, retrying


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)


class Flaky:
    """Fails with the given errors in order, then returns "ok"; counts calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


FAST = RetryPolicy(attempts=5, min_delay=0.001, max_delay=0.004, deadline=5.0)


def test_backoff_doubles_from_minimum_within_bounds() -> None:
    """Each attempt's delay lies between the doubled base and 1.5 times it, inside the bounds."""
    rng = random.Random(7)
    for attempt, base in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480)]:
        for _ in range(200):
            delay = backoff_delay(attempt, 30, 3600, rng)
            assert base <= delay <= base * 1.5


def test_backoff_is_capped_and_spread_below_maximum() -> None:
    """Far attempts never exceed the maximum and do not all land on the same value."""
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 30, 3600, rng) for attempt in range(10, 2000, 7)]
    assert all(2700 <= d <= 3600 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100


def test_backoff_jitter_spreads_the_first_attempt() -> None:
    """Jobs failing at the same moment do not retry at the same moment."""
    rng = random.Random(3)
    delays = {round(backoff_delay(1, 30, 3600, rng), 3) for _ in range(100)}
    assert len(delays) > 50
    assert min(delays) >= 30


def test_backoff_edge_cases() -> None:
    """Attempt 0 is an error; a maximum below the minimum yields the minimum; zero stays zero."""
    with pytest.raises(ValueError):
        backoff_delay(0, 1, 2)
    assert backoff_delay(3, 10, 5) == 10
    assert backoff_delay(4, 0, 0) == 0


def test_policy_validation() -> None:
    """A policy with no attempts or negative times is refused; never() means a single try."""
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0, min_delay=1, max_delay=1, deadline=1)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=1, min_delay=-1, max_delay=1, deadline=1)
    assert RetryPolicy.never().attempts == 1


async def test_retries_transient_until_success() -> None:
    """Transient errors are retried and the eventual result returned."""
    fn = Flaky(Transient("a"), Transient("b"))
    assert await retrying(fn, policy=FAST, is_transient=transient) == "ok"
    assert fn.calls == 3


async def test_permanent_error_is_not_retried() -> None:
    """A non-transient error surfaces after one call."""
    fn = Flaky(Permanent("no"))
    with pytest.raises(Permanent):
        await retrying(fn, policy=FAST, is_transient=transient)
    assert fn.calls == 1


async def test_attempts_bound() -> None:
    """After `attempts` calls the last transient error is raised."""
    fn = Flaky(*(Transient(str(i)) for i in range(10)))
    with pytest.raises(Transient, match="2"):
        await retrying(
            fn,
            policy=RetryPolicy(attempts=3, min_delay=0.001, max_delay=0.001, deadline=5),
            is_transient=transient,
        )
    assert fn.calls == 3


async def test_single_attempt_switches_retries_off() -> None:
    """attempts=1 calls once even for a transient error."""
    fn = Flaky(Transient("x"))
    with pytest.raises(Transient):
        await retrying(fn, policy=RetryPolicy.never(), is_transient=transient)
    assert fn.calls == 1


async def test_deadline_bound() -> None:
    """No retry starts when its delay would end past the deadline."""
    fn = Flaky(*(Transient(str(i)) for i in range(10)))
    policy = RetryPolicy(attempts=10, min_delay=0.05, max_delay=0.05, deadline=0.12)
    started = time.monotonic()
    with pytest.raises(Transient):
        await retrying(fn, policy=policy, is_transient=transient)
    assert fn.calls in (2, 3)
    assert time.monotonic() - started < 0.5
