"""The worker runner: woken by commits, scanning as a fallback, surviving bugs, stopping safely."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.queue.foreground import FRONT_CROWD, FRONT_MAX_WAIT_SECONDS, Foreground, give_way
from gateway.queue.runner import Runner, hand_on, run_until_idle
from gateway.store import Database
from gateway.store.db import StoreUnavailable

# Long enough that only wake() can explain a prompt run.
NEVER = 3600.0
WITHIN = 5.0


class Queue:
    """A worker over an in-memory list: each round handles every item there."""

    def __init__(self, name: str = "queue") -> None:
        self.name = name
        self.items: list[str] = []
        self.handled: list[str] = []
        self.rounds = 0
        self.changed = asyncio.Condition()

    async def run_once(self) -> int:
        self.rounds += 1
        taken, self.items = self.items, []
        self.handled.extend(taken)
        async with self.changed:
            self.changed.notify_all()
        return len(taken)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WITHIN):
            async with self.changed:
                await self.changed.wait_for(predicate)


StartRunner = Callable[..., Awaitable[Runner]]


@pytest.fixture
async def runners() -> AsyncIterator[StartRunner]:
    """Starts runners; every one is stopped at the end of the test."""
    started: list[Runner] = []

    async def start(*workers: object, **options: float) -> Runner:
        runner = Runner(workers, **{"scan_interval": NEVER, **options})  # type: ignore[arg-type]
        await runner.start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        await runner.stop(timeout=WITHIN)


async def test_wake_makes_an_idle_worker_run_promptly(runners: StartRunner) -> None:
    """With a scan interval of an hour, wake() alone gets new work handled at once."""
    queue = Queue()
    runner = await runners(queue)
    await queue.until(lambda: queue.rounds >= 1)  # the first round found nothing
    queue.items.append("job-1")
    runner.wake()
    await queue.until(lambda: queue.handled == ["job-1"])


async def test_a_named_wake_leaves_the_other_workers_asleep(runners: StartRunner) -> None:
    """wake("prepare") runs prepare's round at once; a worker not named keeps sleeping until
    a wake for all."""
    prepare, other = Queue("prepare"), Queue("other")
    runner = await runners(prepare, other)
    await prepare.until(lambda: prepare.rounds >= 1)
    await other.until(lambda: other.rounds >= 1)
    other.items.append("not announced to it")
    before = prepare.rounds
    runner.wake("prepare")
    await prepare.until(lambda: prepare.rounds > before)
    for _ in range(20):  # every task that was ready has run by now
        await asyncio.sleep(0)
    assert (other.rounds, other.handled) == (1, [])
    runner.wake()
    await other.until(lambda: other.handled == ["not announced to it"])


async def test_scan_interval_finds_work_without_a_wake(runners: StartRunner) -> None:
    """Work nobody announced (a deferred job coming due) is found by the periodic scan."""
    queue = Queue()
    await runners(queue, scan_interval=0.02)
    await queue.until(lambda: queue.rounds >= 1)
    queue.items.append("deferred")
    await queue.until(lambda: queue.handled == ["deferred"])


async def test_worker_runs_again_while_it_finds_work(runners: StartRunner) -> None:
    """A round that handled something is followed by another, without waiting for a wake."""

    class Batches(Queue):
        async def run_once(self) -> int:
            self.rounds += 1
            taken, self.items = self.items[:2], self.items[2:]
            self.handled.extend(taken)
            async with self.changed:
                self.changed.notify_all()
            return len(taken)

    queue = Batches()
    queue.items = [f"job-{n}" for n in range(7)]
    await runners(queue)
    await queue.until(lambda: len(queue.handled) == 7)
    assert queue.rounds >= 4


async def test_wake_during_a_round_is_not_lost(runners: StartRunner) -> None:
    """Work committed while a round is running is picked up right after that round."""
    entered = asyncio.Event()
    release = asyncio.Event()

    class Slow(Queue):
        async def run_once(self) -> int:
            handled = await super().run_once()
            if self.rounds == 1:  # looked at the queue (empty), now busy a while
                entered.set()
                await release.wait()
            return handled

    queue = Slow()
    runner = await runners(queue)
    await asyncio.wait_for(entered.wait(), WITHIN)
    queue.items.append("late")  # committed after this round looked at the queue
    runner.wake()
    release.set()
    await queue.until(lambda: queue.handled == ["late"])


async def test_a_raising_worker_is_logged_and_keeps_running(runners: StartRunner) -> None:
    """An unexpected exception is logged with its traceback and the worker carries on."""

    class Flaky(Queue):
        async def run_once(self) -> int:
            if self.rounds < 2:
                self.rounds += 1
                raise RuntimeError(f"bug number {self.rounds}")
            return await super().run_once()

    queue = Flaky()
    queue.items.append("job-1")
    other = Queue("other")
    with capture_logs() as logs:
        runner = await runners(queue, other, error_pause=0.001, max_error_pause=0.01)
        await queue.until(lambda: queue.handled == ["job-1"])
        other.items.append("unaffected")
        runner.wake()
        await other.until(lambda: other.handled == ["unaffected"])
    crashes = [e for e in logs if e["event"] == "worker.crashed"]
    assert [e["failures"] for e in crashes] == [1, 2]
    assert all(e["log_level"] == "error" and e["exc_info"] is True for e in crashes)
    assert runner.running


async def test_error_pause_grows_and_is_bounded() -> None:
    """Consecutive failures wait longer each time, never longer than the maximum."""
    sixth = asyncio.Event()

    class Broken:
        name = "broken"
        calls = 0

        async def run_once(self) -> int:
            self.calls += 1
            if self.calls == 7:  # the sixth failure has been logged
                sixth.set()
            raise ValueError("always")

    runner = Runner([Broken()], scan_interval=NEVER, error_pause=0.001, max_error_pause=0.004)
    with capture_logs() as logs:
        await runner.start()
        try:
            await asyncio.wait_for(sixth.wait(), WITHIN)
        finally:
            await runner.stop(timeout=WITHIN)
    pauses = [e["pause"] for e in logs if e["event"] == "worker.crashed"]
    assert len(pauses) >= 6
    assert pauses[0] < pauses[2]
    assert max(pauses) <= 0.004


async def test_stop_waits_for_the_round_in_progress() -> None:
    """Stopping lets the current run_once finish (a safe point) before the task ends."""
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[bool] = []

    class Busy:
        name = "busy"

        async def run_once(self) -> int:
            entered.set()
            await release.wait()
            finished.append(True)
            return 1

    runner = Runner([Busy()], scan_interval=NEVER)
    await runner.start()
    await asyncio.wait_for(entered.wait(), WITHIN)
    stopping = asyncio.create_task(runner.stop(timeout=WITHIN))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, WITHIN)
    assert finished == [True]  # exactly the one round: no new one started after stop
    assert not runner.running


async def test_stop_cancels_a_round_that_outlives_the_timeout() -> None:
    """A round stuck past the timeout is cancelled so shutdown cannot hang."""
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    class Stuck:
        name = "stuck"

        async def run_once(self) -> int:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 0

    runner = Runner([Stuck()], scan_interval=NEVER)
    await runner.start()
    await asyncio.wait_for(entered.wait(), WITHIN)
    with capture_logs() as logs:
        await runner.stop(timeout=0.01)
    assert cancelled.is_set()
    assert not runner.running
    assert [e["workers"] for e in logs if e["event"] == "workers.stop_timeout"] == [["stuck"]]


async def test_stop_ends_idle_workers_at_once() -> None:
    """Idle workers waiting for work end as soon as stop is called."""
    queue = Queue()
    runner = Runner([queue], scan_interval=NEVER)
    await runner.start()
    await queue.until(lambda: queue.rounds >= 1)
    await asyncio.wait_for(runner.stop(timeout=NEVER), WITHIN)
    assert not runner.running


async def test_run_until_idle_drains_all_workers() -> None:
    """All workers run until one full round finds nothing; the total is returned."""
    first, second = Queue("first"), Queue("second")
    first.items = ["a", "b"]

    class Feeder(Queue):
        async def run_once(self) -> int:
            handled = await super().run_once()
            second.items.extend(f"from-{item}" for item in self.handled[-handled:] if handled)
            return handled

    feeder = Feeder("feeder")
    feeder.items = ["c"]
    assert await run_until_idle([first, feeder, second]) == 4
    assert first.handled == ["a", "b"]
    assert second.handled == ["from-c"]
    assert await run_until_idle([first, feeder, second]) == 0


async def test_run_until_idle_times_out_on_endless_work() -> None:
    """A queue that never empties raises TimeoutError instead of hanging the test."""

    class Endless:
        name = "endless"

        async def run_once(self) -> int:
            await asyncio.sleep(0)
            return 1

    with pytest.raises(TimeoutError):
        await run_until_idle([Endless()], timeout=0.05)


async def test_run_until_idle_lets_errors_through() -> None:
    """In tests a worker's exception surfaces instead of being logged away."""

    class Broken:
        name = "broken"

        async def run_once(self) -> int:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run_until_idle([Broken()])


def test_worker_names_must_be_unique() -> None:
    """Two workers of one name would share a wake-up flag and a log name: refused."""
    with pytest.raises(ValueError, match="unique"):
        Runner([Queue("a"), Queue("a")], scan_interval=1)


async def test_a_round_that_handled_something_wakes_only_the_stages_it_feeds(
    runners: StartRunner,
) -> None:
    """feeds: first's handled item wakes second (which feeds no one), a third sleeps on."""
    first, second, third = Queue("first"), Queue("second"), Queue("third")
    runner = await runners(first, second, third, feeds={"first": ("second",), "second": ()})
    for queue in (first, second, third):
        await queue.until(lambda queue=queue: queue.rounds >= 1)
    second.items.append("made by first")
    third.items.append("not first's")
    first.items.append("job")
    runner.wake("first")
    await second.until(lambda: second.handled == ["made by first"])
    for _ in range(20):  # every task that was ready has run by now
        await asyncio.sleep(0)
    assert (third.rounds, third.handled) == (1, [])
    runner.wake()
    await third.until(lambda: third.handled == ["not first's"])


async def test_an_item_handed_on_wakes_the_next_stage_before_its_round_ends(
    runners: StartRunner,
) -> None:
    """A round of two items at once: the first one handed on (hand_on) is the next stage's
    work at once, while the round still waits for its second; outside a runner, a no-op."""
    hand_on("upload")
    second = Queue("upload")
    release = asyncio.Event()

    class Together:
        name = "prepare"
        items = ["job-1"]

        async def run_once(self) -> int:
            if not self.items:
                return 0
            self.items = []

            async def first() -> None:
                second.items.append("job-1")
                hand_on("upload")

            await asyncio.gather(first(), release.wait())
            return 2

    runner = await runners(Together(), second, feeds={"prepare": ("upload",), "upload": ()})
    await second.until(lambda: second.rounds >= 1)
    runner.wake("prepare")
    await second.until(lambda: second.handled == ["job-1"])
    assert not release.is_set()  # the round that handed it on is still running
    release.set()


async def test_an_item_handed_on_wakes_only_the_next_stage(runners: StartRunner) -> None:
    """hand_on wakes the stage it names alone, not every stage the worker feeds (a prepared
    job is no work of the reports'): reports looks once the round ends, not per job."""
    upload, reports = Queue("upload"), Queue("reports")
    release = asyncio.Event()

    class Together:
        name = "prepare"
        items = ["job-1", "job-2", "job-3"]

        async def run_once(self) -> int:
            taken, self.items = self.items, []
            for job in taken:
                upload.items.append(job)
                hand_on("upload")
                await upload.until(lambda job=job: job in upload.handled)
            if taken:
                await release.wait()
            return len(taken)

    await runners(
        Together(), upload, reports, feeds={"prepare": ("upload", "reports"), "upload": ()}
    )
    await reports.until(lambda: reports.rounds >= 1)  # its first round, at start
    await upload.until(lambda: upload.handled == ["job-1", "job-2", "job-3"])
    for _ in range(20):  # every task that was ready has run by now
        await asyncio.sleep(0)
    rounds = reports.rounds
    release.set()
    await reports.until(lambda: reports.rounds == rounds + 1)  # the round's end wakes it
    assert rounds == 1


async def test_rounds_wait_while_the_foreground_is_busy_within_the_bound() -> None:
    """Foreground.quiet() returns at once when idle, when the busy work ends, and at the
    latest after max_wait while it goes on."""
    # A bound of an hour first: returning within seconds can only be the end of the busy work
    # (or no busy work at all), however slowly a loaded machine runs the loop.
    foreground = Foreground(max_wait=NEVER)
    await asyncio.wait_for(foreground.quiet(), WITHIN)
    with foreground.busy():
        waiting = asyncio.ensure_future(foreground.quiet())
        for _ in range(20):  # every task that was ready has run by now
            await asyncio.sleep(0)
        assert not waiting.done()
    await asyncio.wait_for(waiting, WITHIN)  # ended with the busy work, not at the bound
    foreground = Foreground(max_wait=0.2)
    loop = asyncio.get_running_loop()
    with foreground.busy():
        started = loop.time()
        await foreground.quiet()
        assert 0.15 <= loop.time() - started < 1.0


async def test_front_stages_wait_for_a_crowd_in_data_only(runners: StartRunner) -> None:
    """One session in DATA (a steady stream's message) holds back the other workers' rounds,
    not a front stage's; FRONT_CROWD sessions at once (a flood) hold back both."""
    foreground = Foreground(max_wait=NEVER)
    prepare, reports = Queue("prepare"), Queue("reports")
    runner = await runners(prepare, reports, foreground=foreground, front=("prepare",))
    await prepare.until(lambda: prepare.rounds >= 1)
    await reports.until(lambda: reports.rounds >= 1)
    with contextlib.ExitStack() as sessions:
        sessions.enter_context(foreground.busy())
        prepare.items.append("job-1")
        reports.items.append("report-1")
        runner.wake()
        await prepare.until(lambda: prepare.handled == ["job-1"])
        for _ in range(20):  # every task that was ready has run by now
            await asyncio.sleep(0)
        assert reports.handled == []
        for _ in range(FRONT_CROWD - 1):
            sessions.enter_context(foreground.busy())
        prepare.items.append("job-2")
        runner.wake("prepare")
        for _ in range(20):
            await asyncio.sleep(0)
        assert prepare.handled == ["job-1"]
    await prepare.until(lambda: prepare.handled == ["job-1", "job-2"])
    await reports.until(lambda: reports.handled == ["report-1"])


class Stage:
    """A worker handling one item a round, each taking `seconds`, noting when it finished each
    (an item of its own loop gives way first, as the back stages' loops do)."""

    def __init__(self, name: str, items: int, seconds: float, *, gives_way: bool = False):
        self.name = name
        self.items = [f"{name}-{n}" for n in range(items)]
        self.seconds = seconds
        self.gives_way = gives_way
        self.done: list[tuple[str, float]] = []
        self.changed = asyncio.Condition()

    async def run_once(self) -> int:
        if not self.items:
            return 0
        if self.gives_way:
            await give_way()
        await asyncio.sleep(self.seconds)
        await _note(self, self.items.pop(0))
        return 1


async def _note(stage: Stage | Batch, item: str) -> None:
    stage.done.append((item, asyncio.get_running_loop().time()))
    async with stage.changed:
        stage.changed.notify_all()


async def _until_done(stage: Stage | Batch, count: int, seconds: float = WITHIN) -> None:
    async with asyncio.timeout(seconds), stage.changed:
        await stage.changed.wait_for(lambda: len(stage.done) >= count)


async def test_the_other_workers_wait_while_a_front_stage_has_items(
    runners: StartRunner,
) -> None:
    """While a front stage has items (a streak shorter than the bound) the other workers do not
    start a round; once it is idle they handle all of theirs."""
    prepare = Stage("prepare", 3, 0.01)  # a streak well inside the bound, even when loaded
    reports = Stage("reports", 3, 0.0)
    await runners(prepare, reports, front=("prepare",))
    await _until_done(reports, 3)
    assert [item for item, _ in reports.done] == ["reports-0", "reports-1", "reports-2"]
    assert len(prepare.done) == 3
    assert reports.done[0][1] >= prepare.done[-1][1]


async def test_a_front_stage_that_stays_busy_defers_the_others_only_within_the_bound(
    runners: StartRunner,
) -> None:
    """A front stage that never runs out of work defers the others' rounds by at most
    FRONT_MAX_WAIT_SECONDS, never stops them: each of their items still gets handled."""
    submit = Stage("submit", 100_000, 0.002)
    events = Stage("events", 4, 0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runners(submit, events, front=("submit",))
    await _until_done(events, 4, 4 * FRONT_MAX_WAIT_SECONDS + WITHIN)
    assert submit.items  # still busy throughout
    assert events.done[0][1] - started >= 0.8 * FRONT_MAX_WAIT_SECONDS


async def test_under_a_lasting_front_load_rounds_keep_half_the_time_too(
    runners: StartRunner,
) -> None:
    """The rule of the waits between items holds before rounds: after a round's wait that ran
    out its bound, the next rounds start without one for as long again, so a stage of one item
    a round (10 ms each) handles its 20 items in about two bounds, not a bound each (5 s)."""
    submit = Stage("submit", 100_000, 0.002)
    events = Stage("events", 20, 0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runners(submit, events, front=("submit",))
    await _until_done(events, 20, 10 * FRONT_MAX_WAIT_SECONDS + WITHIN)
    assert submit.items  # still busy throughout
    assert events.done[0][1] - started >= 0.8 * FRONT_MAX_WAIT_SECONDS  # it did give way
    assert events.done[-1][1] - started < 10 * FRONT_MAX_WAIT_SECONDS


class Batch:
    """A back stage whose one round handles all its items, giving way before each (as the
    reports' and the outbox's loops do), pausing `seconds` after each."""

    def __init__(self, name: str, items: int, seconds: float) -> None:
        self.name = name
        self.items = [f"{name}-{n}" for n in range(items)]
        self.seconds = seconds
        self.done: list[tuple[str, float]] = []
        self.changed = asyncio.Condition()

    async def run_once(self) -> int:
        handled = 0
        while self.items:
            await give_way()
            await _note(self, self.items.pop(0))
            handled += 1
            await asyncio.sleep(self.seconds)
        return handled


async def test_back_stages_give_way_between_the_items_of_a_round(runners: StartRunner) -> None:
    """A front stage that gets work in the middle of a back stage's round goes first: the
    round's next item waits for the front stage's items (outside a runner's worker, give_way
    returns at once)."""
    await asyncio.wait_for(give_way(), 0.05)
    prepare = Stage("prepare", 0, 0.02)
    outbox = Batch("outbox", 3, 0.05)
    runner = await runners(prepare, outbox, front=("prepare",))
    await _until_done(outbox, 1)
    prepare.items = [f"prepare-{n}" for n in range(3)]
    runner.wake("prepare")
    await _until_done(prepare, 3)
    await _until_done(outbox, 3)
    assert outbox.done[1][1] >= prepare.done[-1][1]


async def test_under_a_lasting_front_load_a_back_stage_keeps_half_its_time(
    runners: StartRunner,
) -> None:
    """A front stage that never runs out of work: after each wait that runs out its bound the
    back stage's items go on for as long again without waits, so its 20 items of 10 ms take
    about two bounds, not a bound each (5 s)."""
    submit = Stage("submit", 100_000, 0.002)
    outbox = Batch("outbox", 20, 0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runners(submit, outbox, front=("submit",))
    await _until_done(outbox, 20, 10 * FRONT_MAX_WAIT_SECONDS + WITHIN)
    assert submit.items  # still busy throughout
    assert outbox.done[0][1] - started >= 0.8 * FRONT_MAX_WAIT_SECONDS  # it did give way
    assert outbox.done[-1][1] - started < 10 * FRONT_MAX_WAIT_SECONDS


async def test_a_round_the_store_failed_runs_again_once_the_store_answers(
    tmp_path: Path,
) -> None:
    """A round that raised StoreUnavailable is not left to its error pause (an hour here): the
    next round starts once a look at the store finds it answering; another error still
    pauses the whole time."""

    class StoreAway(Queue):
        async def run_once(self) -> int:
            if self.rounds == 0:
                self.rounds += 1
                raise StoreUnavailable("postgresql: store unreachable: the test says so")
            return await super().run_once()

    class Buggy(Queue):
        async def run_once(self) -> int:
            self.rounds += 1
            raise RuntimeError("a bug, not the store")

    db = await Database(tmp_path / "store.db").open()
    away, buggy = StoreAway("away"), Buggy("buggy")
    away.items.append("job-1")
    runner = Runner(
        [away, buggy], scan_interval=NEVER, error_pause=NEVER, max_error_pause=NEVER, db=db
    )
    await runner.start()
    try:
        await away.until(lambda: away.handled == ["job-1"])
        assert buggy.rounds == 1
    finally:
        await runner.stop(timeout=WITHIN)
        db.close()


async def test_a_store_lost_after_the_round_does_not_cost_a_scan_interval(
    runners: StartRunner,
) -> None:
    """next_due raising StoreUnavailable (the store went away after the round): the worker
    looks again within a second, not after its scan interval (an hour here)."""

    class LosesTheStore(Queue):
        async def next_due(self) -> float | None:
            if self.rounds == 1:
                raise StoreUnavailable("postgresql: store unreachable: the test says so")
            return None

    queue = LosesTheStore()
    await runners(queue)
    await queue.until(lambda: queue.rounds >= 2)
