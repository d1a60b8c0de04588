"""The daemon's document worker processes, each under a memory and a time budget: started as
callers need them, one request at a time each, killed past their budget or at stop (what they
run: gateway/document/workers.py; the process itself: gateway/document/isolated.py).

A document that would take the daemon's memory or time costs a worker instead:

- memory: the worker runs under RLIMIT_AS = `documents.worker_memory_mb`; an allocation past
  it fails there, and the caller gets DocumentError(kind="too_costly"), a permanent refusal
  (`554 5.3.4` at DATA, a failed job with the reason in its report at prepare);
- time: past `documents.worker_timeout_seconds` the worker is killed (SIGKILL) and the caller
  gets the same kind of DocumentError;
- stop: `stop()` kills every worker at once, so a parse in progress never holds the daemon's
  shutdown; calls in flight and later ones raise WorkersStopped (prepare gives its claim back);
- a worker that dies for another reason (a signal: the kernel's OOM killer, a crash in a C
  library) raises WorkerDied, which is transient: DATA answers 451, prepare defers and fails
  the job only when it happened `queue.max_pickups` times.

Never a daemon crash, never a pickup charged by the crash guard. Workers are started with
`subprocess` semantics that keep them from outliving the daemon: close_fds (they hold none of
its descriptors, its stderr or a test's pipe included), stdin and stdout pipes for requests and
answers, stderr to /dev/null, and in the child PR_SET_PDEATHSIG plus an exit at stdin's end.
PR_SET_PDEATHSIG follows the *thread* that forked, so workers are started from the event
loop's thread, which lives as long as the daemon.

One worker serves one request at a time and then waits for the next (Python and its imports
cost ~0.5 s of CPU to start, too much to pay per message). Workers are started as callers need
them; callers are bounded already (smtp.max_concurrent_data DATA checks, PREPARES_AT_ONCE
prepares and one report at a time), so the pool is too: at most that many stay waiting, and
those idle for IDLE_SECONDS end, down to one (each costs ~80 MB while it waits). A worker whose
memory stays above a quarter of its budget after a request exits after answering, giving back
what that document cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import gateway
from gateway import log
from gateway.config import Config
from gateway.document import wire
from gateway.document.cover import CoverTemplateError
from gateway.document.mime import TOO_COSTLY, DocumentError

logger = log.get_logger(__name__)

# Jobs the prepare stage builds at once, each in a worker (gateway/outbound/prepare.py).
PREPARES_AT_ONCE = 4
# A waiting worker unused this long ends (all but one): a burst's workers do not stay forever.
IDLE_SECONDS = 60.0
# How long a worker told to end (its stdin closed) may take before it is killed.
_EXIT_GRACE_SECONDS = 5.0
_MODULE = "gateway.document.isolated"


class WorkerDied(Exception):
    """A worker process ended without answering, not by our hand (transient: try again)."""

    transient = True


class WorkersStopped(Exception):
    """The daemon is stopping: no document work is done any more."""


def _child_environment() -> dict[str, str]:
    # The worker must run this very code, whatever sys.path the interpreter would build on its
    # own (a checkout run with PYTHONPATH, an installed package).
    root = str(Path(gateway.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _relog(events: list[dict[str, Any]], **context: Any) -> None:
    """Log here what the worker logged while it worked (a conversion that failed, say)."""
    for event in events:
        fields = dict(event)
        name = str(fields.pop("event", "document.worker_log"))
        level = str(fields.pop("level", "info"))
        method = getattr(logger, level, None) if level in _LEVELS else None
        (method or logger.info)(
            name, **{**fields, **{f"worker_{k}": v for k, v in context.items()}}
        )


_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.killed = False
        self.idle_since = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    async def exchange(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(wire.encode(header, blobs))
        await stdin.drain()
        return await wire.read_frame_async(stdout)

    async def kill(self) -> None:
        self.killed = True
        self.signal_kill()
        await self.process.wait()

    def signal_kill(self) -> None:
        """SIGKILL, leaving the reaping to asyncio's child watcher.

        Not Process.kill(): subprocess's send_signal polls first, and a worker that has just
        died (a kill the daemon did not send, the OOM killer) is then reaped by that poll,
        before the watcher's own waitpid; the watcher then reports "exit status 255" instead
        of the signal. A pid is not reused before its process is reaped, and only the watcher
        reaps ours; returncode is None until the watcher's callback has run, a moment after its
        waitpid, and a pid comes round again only after the kernel has handed out the others.
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Tell the worker to end (its stdin ends) and reap it; killed if it lingers."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), _EXIT_GRACE_SECONDS)
        except TimeoutError:
            await self.kill()


class WorkerPool:
    """The daemon's document worker processes (a component: `start()`, `stop()`); `_run`
    hands one request to a worker and returns its answer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._stopping = False
        self._trim_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Every worker started and not yet reaped, whatever list it is on (or none: one whose
        # call was cancelled is signalled, not awaited): stop() kills and reaps them all, so
        # none outlives the loop whose child watcher would reap it.
        self._live: set[_Worker] = set()

    @property
    def keep_idle(self) -> int:
        """Workers that may wait for work: one per caller that may come at once (the DATA
        checks, the jobs prepare builds at once, and the reports' transmission reports)."""
        return self.config.smtp.max_concurrent_data + PREPARES_AT_ONCE + 1

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now (for tests and the status of a stop)."""
        return [w.pid for w in [*self._idle, *self._busy] if w.process.returncode is None]

    async def start(self) -> None:
        """Start one worker ahead, so the first message does not wait for it."""
        self._stopping = False
        try:
            self._idle.append(await self._spawn())
        except OSError as exc:  # no processes or memory left now: the next call tries again
            logger.warning("document.worker_start_failed", error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        """Kill every worker now; calls in flight raise WorkersStopped."""
        self._stopping = True
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        workers = [*self._live]
        self._live.clear()
        self._idle.clear()
        busy = len(self._busy)
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if busy:
            logger.warning("document.work_stopped", workers=busy)

    def reconfigure(self, config: Config) -> None:
        """SIGHUP: the new settings from the next request on; the memory budget for workers
        started from now on (idle ones end now if it changed)."""
        changed = config.documents != self.config.documents
        self.config = config
        if changed:
            idle, self._idle = self._idle, []
            for worker in idle:
                self._close_later(worker)

    def _close_later(self, worker: _Worker) -> None:
        task = asyncio.ensure_future(worker.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _trim(self) -> None:
        """End the workers that waited IDLE_SECONDS for nothing, all but one."""
        self._trim_timer = None
        now = asyncio.get_running_loop().time()
        keep = [w for w in self._idle if now - w.idle_since < IDLE_SECONDS] or self._idle[-1:]
        for worker in self._idle:
            if worker not in keep:
                self._close_later(worker)
        self._idle = keep
        if len(self._idle) > 1:
            self._trim_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._trim)

    async def _spawn(self) -> _Worker:
        budget = self.config.documents.worker_memory_mb * 1024 * 1024
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _MODULE,
            str(budget),
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            close_fds=True,
            env=_child_environment(),
        )
        worker = _Worker(process)
        self._live = {w for w in self._live if w.process.returncode is None}
        self._live.add(worker)
        return worker

    async def _run(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        if self._stopping:
            raise WorkersStopped("the gateway is stopping")
        worker = self._waiting() or await self._spawn()
        if self._stopping:  # stop() came while this one was starting
            await worker.kill()
            raise WorkersStopped("the gateway is stopping")
        self._busy.add(worker)
        timeout = self.config.documents.worker_timeout_seconds
        task = header["task"]
        try:
            answer, results = await asyncio.wait_for(worker.exchange(header, blobs), timeout)
        except TimeoutError:
            await worker.kill()
            logger.warning("document.worker_killed", task=task, pid=worker.pid, timeout=timeout)
            raise DocumentError(
                f"reading the document took longer than {timeout:g} seconds", kind=TOO_COSTLY
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError) as exc:
            if not worker.killed:
                await worker.kill()  # a broken answer: make sure it is gone, then reap it
            if self._stopping:
                raise WorkersStopped("the gateway is stopping") from None
            ended = _how_it_ended(worker.process.returncode)
            logger.warning(
                "document.worker_died", task=task, pid=worker.pid, ended=ended, error=repr(exc)
            )
            raise WorkerDied(f"the document worker process ended ({ended})") from None
        except BaseException:
            # Cancelled (the daemon's stop gave up waiting): the work dies with the wait.
            worker.signal_kill()
            raise
        finally:
            self._busy.discard(worker)
        await self._release(worker, recycle=bool(answer.get("recycle")))
        _relog(answer.get("log") or [], task=task, pid=worker.pid)
        error = answer.get("error")
        if error is not None:
            raise self._error(error)
        return answer, results

    def _waiting(self) -> _Worker | None:
        """The worker that waited least long, skipping any that ended meanwhile (killed while
        idle): those are not a failure of the next message."""
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
        return None

    async def _release(self, worker: _Worker, *, recycle: bool) -> None:
        if recycle or self._stopping or len(self._idle) >= self.keep_idle:
            await worker.close()
            return
        loop = asyncio.get_running_loop()
        worker.idle_since = loop.time()
        self._idle.append(worker)
        if len(self._idle) > 1 and self._trim_timer is None:
            self._trim_timer = loop.call_later(IDLE_SECONDS, self._trim)

    def _error(self, error: dict[str, Any]) -> Exception:
        kind = error.get("kind")
        message = str(error.get("message", ""))
        if kind == "document":
            return DocumentError(message, kind=str(error["document_kind"]))
        if kind == "cover_template":
            return CoverTemplateError(message)
        if kind == "memory":
            budget = self.config.documents.worker_memory_mb
            return DocumentError(
                f"reading the document needs more than {budget} MB of memory", kind=TOO_COSTLY
            )
        if kind == "os":
            return OSError(
                error.get("errno"), error.get("strerror") or message, error.get("filename")
            )
        return RuntimeError(f"document worker: {error.get('type', 'error')}: {message}")
