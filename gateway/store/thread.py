"""The store's thread: one thread for the one SQLite connection, with a lane that goes first.

Every call on the store runs on one thread, in the order it was queued, as a ThreadPoolExecutor
of one worker would run it; except that calls queued with `submit_first` run before any call
of the other lane that is still waiting. The group commits of the writes a client is waiting
on (a message's row before its 250, a webhook's event before its 200: store/commit.py) go
there, so they no longer wait behind the queue workers' claims and outcomes, each of which is
a transaction and an fsync of its own: with the daemon's pipeline busy behind a flood of
mail, a DATA's commit waited for several of them. A call already running is never
interrupted, and the other lane only waits while the first has work: the first lane is one
batch at a time (GroupCommit sends the next only after the last returned), so the workers
get the thread between batches.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class StoreThread(Executor):
    """An executor of one thread, named `<name>_0`, started at the first call."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lanes: tuple[deque[_Call], deque[_Call]] = (deque(), deque())
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._queue(1, fn, args, kwargs)

    def submit_first(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """`submit`, ahead of the calls of the other lane that have not started."""
        return self._queue(0, fn, args, kwargs)

    def _queue(
        self, lane: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._lanes[lane].append((future, fn, args, kwargs))
            if self._thread is None:
                # A daemon thread: a store never closed must not hold the interpreter's exit
                # (SQLite's own transactions keep the file whole either way).
                self._thread = threading.Thread(
                    target=self._work, name=f"{self._name}_0", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not (self._lanes[0] or self._lanes[1] or self._closed):
                    self._ready.wait()
                lane = self._lanes[0] or self._lanes[1]
                if not lane:
                    return  # closed, and every queued call has run
                future, fn, args, kwargs = lane.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, kwargs  # no call's arguments kept alive while waiting

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; the queued ones still run (cancelled first with `cancel_futures`)."""
        with self._ready:
            self._closed = True
            if cancel_futures:
                for lane in self._lanes:
                    while lane:
                        lane.popleft()[0].cancel()
            self._ready.notify()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
