"""The store's thread (gateway/store/thread.py): calls in order, the first lane first."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.jobs import faxes_sent_since, insert_job
from gateway.store.thread import StoreThread
from tests.test_store_commit import _job


def test_calls_run_in_order_on_one_thread_and_the_first_lane_goes_first() -> None:
    """While a call runs, calls queued with submit_first run before those queued with submit
    earlier; each lane keeps its own order; all run on one named thread."""
    executor = StoreThread("store")
    ran: list[str] = []
    threads: set[str] = set()
    started, release = threading.Event(), threading.Event()

    def call(name: str) -> str:
        threads.add(threading.current_thread().name)
        ran.append(name)
        return name

    def blocking() -> None:
        started.set()
        release.wait(10)

    try:
        executor.submit(blocking)
        assert started.wait(10)
        later = [executor.submit(call, f"worker-{n}") for n in range(3)]
        first = [executor.submit_first(call, f"client-{n}") for n in range(2)]
        release.set()
        assert [f.result(10) for f in first + later] == [
            "client-0", "client-1", "worker-0", "worker-1", "worker-2"
        ]  # fmt: skip
        assert ran == ["client-0", "client-1", "worker-0", "worker-1", "worker-2"]
        assert threads == {"store_0"}
    finally:
        executor.shutdown()


def test_an_exception_reaches_its_caller_and_shutdown_runs_what_was_queued() -> None:
    """A call's exception is its future's; calls queued before shutdown still run; after it
    nothing more is taken."""
    executor = StoreThread("store")

    def fail() -> None:
        raise ValueError("no")

    failed = executor.submit(fail)
    slow = executor.submit(time.sleep, 0.05)
    queued = executor.submit(lambda: "ran")
    executor.shutdown(wait=True)
    with pytest.raises(ValueError, match="no"):
        failed.result(1)
    assert slow.result(1) is None and queued.result(1) == "ran"
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)


async def test_a_grouped_commit_does_not_wait_behind_queued_worker_calls(tmp_path: Path) -> None:
    """With the store's thread busy and worker calls queued behind, a group commit's batch
    runs next, before them, and its row is committed when it returns."""
    db = await Database(tmp_path / "store.db").open()
    try:
        release = threading.Event()
        order: list[str] = []

        def busy(conn: object) -> None:
            release.wait(10)

        def worker_call(conn: object) -> None:
            order.append("worker")

        def message_row(conn: sqlite3.Connection) -> None:
            insert_job(conn, _job())
            order.append("commit")

        holding = asyncio.ensure_future(db.run(busy))
        await asyncio.sleep(0.05)
        workers = [asyncio.ensure_future(db.run(worker_call)) for _ in range(3)]
        commit = asyncio.ensure_future(GroupCommit(db).run(message_row))
        await asyncio.sleep(0.05)  # the batch is queued (one loop turn, then the store thread)
        release.set()
        await asyncio.gather(holding, commit, *workers)
        assert order == ["commit", "worker", "worker", "worker"]
        assert await db.read(faxes_sent_since, "alice@example.com", time.time() - 60) == 1
    finally:
        await asyncio.to_thread(db.close)
