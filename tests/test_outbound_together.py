"""A round of a whole-job stage (gateway/outbound/together.py) under the runner: a job that
comes while another's work is long is taken up in the same round, not after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config import QueueConfig
from gateway.outbound.together import work_together
from gateway.queue.runner import Runner, run_until_idle
from gateway.queue.schedule import Schedule
from gateway.store import Database
from gateway.store import jobs as store
from gateway.store.records import Job, JobState
from tests.helpers import until
from tests.store_rows import make_job

WITHIN = 10.0


class Slow:
    """A stage of two places whose work on job `slow_id` lasts until `release` is set; it
    notes each job it finished, in order."""

    name = "prepare"

    def __init__(self, db: Database, schedule: Schedule) -> None:
        self.db = db
        self.schedule = schedule
        self.slow_id: str | None = None
        self.release = asyncio.Event()
        self.finished: list[str] = []
        self.rounds = 0

    async def run_once(self) -> int:
        self.rounds += 1
        return await work_together(
            self.db,
            self.schedule,
            JobState.RECEIVED,
            limit=2,
            max_pickups=3,
            work=self._work,
            crashed="job.test_crashed",
        )

    async def _work(self, job: Job) -> None:
        if job.id == self.slow_id:
            await self.release.wait()
        await self.db.run(store.advance, job.id, JobState.RECEIVED, JobState.PREPARED)
        self.finished.append(job.id)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database(tmp_path / "store.db").open()
    try:
        yield database
    finally:
        database.close()


def _schedule() -> Schedule:
    return Schedule(QueueConfig())


async def test_a_job_that_comes_meanwhile_does_not_wait_for_the_slow_one(db: Database) -> None:
    """The first job's work lasts; a second one, committed and woken for meanwhile, is claimed
    and finished while the first still runs, in the same round."""
    stage = Slow(db, _schedule())
    runner = Runner([stage], scan_interval=3600.0)
    stage.slow_id = await db.run(make_job)
    await runner.start()
    try:
        await until(_true(lambda: stage.rounds >= 1), WITHIN)
        second = await db.run(make_job)
        runner.wake("prepare")
        await until(_true(lambda: stage.finished == [second]), WITHIN)
        assert stage.rounds == 1 and not stage.release.is_set()
        stage.release.set()
        await until(_true(lambda: stage.finished == [second, stage.slow_id]), WITHIN)
    finally:
        stage.release.set()
        await runner.stop(timeout=WITHIN)


async def test_outside_a_runner_a_round_is_one_claim(db: Database) -> None:
    """Without the runner nothing says new work came: a round works on what its one claim
    took, and the next round takes the rest (run_until_idle)."""
    stage = Slow(db, _schedule())
    first = await db.run(make_job)
    stage.release.set()
    assert await stage.run_once() == 1
    await db.run(make_job)
    await db.run(make_job)
    assert await run_until_idle([stage]) == 2
    assert stage.finished[0] == first and len(stage.finished) == 3


def _true(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check
