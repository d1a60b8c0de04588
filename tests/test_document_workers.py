"""Document work in worker processes (document/workers.py, pool.py): budgets, deaths, stop."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.document.mime import TOO_COSTLY, DocumentError
from gateway.document.pool import WorkerDied, WorkersStopped
from gateway.document.workers import DocumentWorkers
from gateway.outbound.prepare import PrepareWorker
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.inbound import InboundFax, InboundState
from gateway.store.jobs import get_job
from gateway.store.records import JobState
from gateway.store.spool import Spool
from tests import samples
from tests.helpers import Clock, queued_job, until

pytestmark = pytest.mark.slow  # each test starts worker processes


def one_page() -> bytes:
    return samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))


def big_png(side: int) -> bytes:
    """A white square: a few hundred KB of PNG, side x side x 3 bytes once decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), "white").save(buffer, "PNG")
    return buffer.getvalue()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def hanging(pool: DocumentWorkers) -> None:
    """Until one of the pool's workers sits in its hang failpoint's sleep (the kernel's wait
    channel says so): the request reached it, whatever the machine's load."""

    def wait_channel(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            return ""

    async def sleeping() -> bool:
        return any("nanosleep" in wait_channel(pid) for pid in pool.pids)

    await until(sleeping, 20)


@asynccontextmanager
async def workers(config: Config) -> AsyncIterator[DocumentWorkers]:
    pool = DocumentWorkers(config)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def test_a_document_over_the_memory_budget_is_refused_and_the_next_is_read(
    make_config: Callable[..., Config],
) -> None:
    """A 9000x9000 PNG (243 MB decoded) under a 256 MB budget: too_costly, not "damaged"; the
    daemon's memory is untouched and the next message is read by a fresh worker."""
    config = make_config({"documents": {"worker_memory_mb": 256}})
    before = _resident_mb()
    async with workers(config) as pool:
        with pytest.raises(DocumentError, match="needs more than 256 MB of memory") as caught:
            await pool.check(samples.mail(samples.attachment(big_png(9000), "huge.png")))
        assert caught.value.kind == TOO_COSTLY
        checked = await pool.check(samples.mail(samples.attachment(samples.pdf(2), "a.pdf")))
        assert checked.pages == 2
    assert _resident_mb() - before < 50


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


async def test_the_same_image_fits_the_default_budget(make_config: Callable[..., Config]) -> None:
    """The default budget (768 MB) reads the image a 256 MB one refuses: a sane default."""
    async with workers(make_config()) as pool:
        checked = await pool.check(samples.mail(samples.attachment(big_png(9000), "huge.png")))
    assert checked.pages == 1


async def test_past_the_time_budget_the_worker_is_killed(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never ends: too_costly after worker_timeout_seconds, its process gone."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_check=hang")
    config = make_config({"documents": {"worker_timeout_seconds": 1}})
    async with workers(config) as pool:
        [pid] = pool.pids
        started = time.monotonic()
        with pytest.raises(DocumentError, match="longer than 1 seconds") as caught:
            await pool.check(samples.mail())
        assert time.monotonic() - started < 5
        assert caught.value.kind == TOO_COSTLY
        assert not alive(pid)


async def test_stop_reaps_the_worker_of_a_cancelled_call(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call cancelled mid-read (a runner's stop giving up on its round) leaves its worker
    killed but not yet reaped: stop() still waits for it, so no process outlives the loop."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_check=hang")
    pool = DocumentWorkers(make_config({"documents": {"worker_timeout_seconds": 600}}))
    await pool.start()
    call = asyncio.ensure_future(pool.check(samples.mail()))
    await hanging(pool)
    [worker] = pool._busy
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await pool.stop()
    assert worker.process.returncode is not None  # reaped, its pipes closed with it
    assert not alive(worker.pid) and pool.pids == []


async def test_stop_kills_work_in_progress_at_once(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() during a read that would take 10 minutes: the call ends WorkersStopped at once,
    no worker is left, and later calls are refused without starting one."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_check=hang")
    pool = DocumentWorkers(make_config({"documents": {"worker_timeout_seconds": 600}}))
    await pool.start()
    [pid] = pool.pids
    call = asyncio.ensure_future(pool.check(samples.mail()))
    await hanging(pool)
    assert not call.done()
    started = time.monotonic()
    await pool.stop()
    with pytest.raises(WorkersStopped):
        await call
    assert time.monotonic() - started < 2
    assert not alive(pid) and pool.pids == []
    with pytest.raises(WorkersStopped):
        await pool.check(samples.mail())


async def test_a_worker_killed_from_outside_is_transient_and_replaced(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to a busy worker (as the OOM killer would): WorkerDied, transient; the next
    call gets a new worker."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_check=hang@2")
    async with workers(make_config()) as pool:
        await pool.check(one_page())  # the first pass of the point goes on
        [pid] = pool.pids
        call = asyncio.ensure_future(pool.check(one_page()))
        await hanging(pool)  # busy with the request, not idle
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="SIGKILL") as caught:
            await call
        assert caught.value.transient
        assert (await pool.check(one_page())).pages == 1
        assert pid not in pool.pids


async def test_data_answers_554_for_a_document_over_budget(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """Over SMTP: 554 5.3.4 naming the budget, and the session goes on."""
    config = make_config({"documents": {"worker_memory_mb": 256}})
    db = await Database(tmp_path / "store.db").open()
    server = SmtpServer(config, db, Spool(config.data.dir / "spool"), lambda: None)
    await server.start()
    try:
        message = samples.mail(samples.attachment(big_png(9000), "huge.png"))

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                client.ehlo()
                client.mail("alice@example.com")
                assert client.rcpt("12015550123@fax.local")[0] == 250
                code, reply = client.data(message)
                assert client.noop()[0] == 250
                return code, reply

        code, reply = await asyncio.to_thread(send)
    finally:
        await server.stop()
        db.close()
    assert code == 554
    assert reply.startswith(b"5.3.4 ") and b"256 MB" in reply


async def test_prepare_past_the_time_budget_fails_the_job_with_the_reason(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare hanging: the job fails once with "longer than 1 seconds", no pickup left."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_prepare=hang")
    config = make_config({"documents": {"worker_timeout_seconds": 1}})
    db, spool, job_id = await queued_job(config)
    try:
        async with workers(config) as pool:
            worker = PrepareWorker(config=config, db=db, clock=Clock(), spool=spool, documents=pool)
            assert await worker.run_once() == 1
        job = await db.run(get_job, job_id)
        assert job is not None
        assert job.state is JobState.FAILED and job.pickups == 0
        assert "longer than 1 seconds" in (job.error or "")
    finally:
        db.close()


async def test_prepare_when_workers_keep_dying_defers_then_fails_never_held(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies on the document (killed each time): deferred, then failed at the
    max_pickups-th death with the reason; never held, never charged to the crash guard."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_prepare=kill")
    config = make_config({"queue": {"max_pickups": 3}})
    db, spool, job_id = await queued_job(config)
    clock = Clock()
    try:
        async with workers(config) as pool:
            worker = PrepareWorker(config=config, db=db, clock=clock, spool=spool, documents=pool)
            for attempt in (1, 2):
                assert await worker.run_once() == 1
                job = await db.run(get_job, job_id)
                assert job is not None
                assert (job.state, job.attempts, job.pickups) == (JobState.RECEIVED, attempt, 0)
                assert "SIGKILL" in (job.error or "")
                clock.advance(config.queue.max_backoff_seconds)
            assert await worker.run_once() == 1
        job = await db.run(get_job, job_id)
        assert job is not None and job.state is JobState.FAILED
        assert "3 times on this document" in (job.error or "")
    finally:
        db.close()


async def test_prepare_stopped_mid_document_gives_the_claim_back(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool stopped while prepare waits on it: the job is received again with no pickup
    counted, so stopping never brings a job nearer to held."""
    monkeypatch.setenv("FAXGW_FAILPOINT", "document_prepare=hang")
    config = make_config()
    db, spool, job_id = await queued_job(config)
    try:
        pool = DocumentWorkers(config)
        await pool.start()
        worker = PrepareWorker(config=config, db=db, clock=Clock(), spool=spool, documents=pool)
        round_ = asyncio.ensure_future(worker.run_once())
        await hanging(pool)  # prepare waits on the worker
        await pool.stop()
        assert await asyncio.wait_for(round_, 5) == 1
        job = await db.run(get_job, job_id)
        assert job is not None
        assert (job.state, job.pickups, job.attempts) == (JobState.RECEIVED, 0, 0)
    finally:
        db.close()


async def test_an_inbound_fax_too_costly_to_preview_is_mailed_without_one(
    make_config: Callable[..., Config],
) -> None:
    """A received 9000x9000 TIFF under a 256 MB budget: the worker's preview runs out of
    memory (the reader calls that damaged), which comes back as the daemon's
    `inbound.preview_failed` line; the fax is still mailed as the TIFF it is; the default
    budget previews the same file."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000), 1).save(buffer, "TIFF", compression="group4")
    data = buffer.getvalue()
    fax = InboundFax(
        id=1,
        carrier_id="in-1",
        state=InboundState.STORED,
        from_number="+15556668888",
        to_number="+12015550101",
        pages=1,
        duration=None,
        fax_time=None,
        media_url=None,
        file_path=None,
        attempts=0,
        next_attempt_at=0,
        error=None,
        created_at=0,
        updated_at=0,
    )
    config = make_config(
        {"documents": {"worker_memory_mb": 256}, "inbound": {"attach_format": "tiff"}}
    )
    async with workers(config) as pool:
        with capture_logs() as logs:
            converted = await pool.inbound(fax, data)
    assert [(name[-4:], kind) for name, kind, _ in converted.attachments] == [
        (".tif", "image/tiff")
    ]
    assert converted.preview is None
    [failed] = [e for e in logs if e["event"] == "inbound.preview_failed"]
    assert failed["worker_task"] == "inbound"
    async with workers(make_config({"inbound": {"attach_format": "tiff"}})) as pool:
        assert (await pool.inbound(fax, data)).preview is not None
