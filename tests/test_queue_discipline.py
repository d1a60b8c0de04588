"""The one queue discipline, for every queue: a deferred item is tried when it is due, and a
restart keeps each item's attempts, due time and unfinished pickups.

Retries on time: a real `Runner` runs the real worker of one queue on real time (clock
time.time), with a scan interval of a minute and no wake, so only the item's due time can explain
a retry 1.5-2 s after the failure. Each first try fails for a real reason (a storage directory
that is a file, the sandbox carrier answering 503, a relay that is down, a media server answering
503, an outbox path that is a file); the fault is removed once the row shows its deferral, and
the retry's effect must carry a timestamp between the due time and one second after it. The
timestamp is the one the gateway itself records for the effect (updated_at, submitted_at,
processed_at, reported_at, sent_at; for inbound the media server's clock at the successful
download), and each test records its lateness as the `retry_lateness_seconds` property.

Restarts: each queue's store is used with explicit times, and the Database is closed and opened
again between the steps, as a restart or a crash leaves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from gateway.callbacks.events import EventsWorker
from gateway.carrier.client import VoxtelesysClient
from gateway.config import Address, Config
from gateway.datadir import DataDir
from gateway.document.workers import DocumentWorkers
from gateway.inbound.worker import InboundWorker
from gateway.mailout.message import RenderedMail, build_message
from gateway.mailout.outbox import OutboxWorker, mail_status, queue_mail
from gateway.mailout.relay import create_relay
from gateway.mailout.templates import MailRenderer
from gateway.ops.httpd import HttpServer
from gateway.outbound.reports import Reporter, ReportsWorker
from gateway.outbound.submit import SubmitWorker
from gateway.outbound.upload import UploadWorker
from gateway.queue.backoff import RetryPolicy
from gateway.queue.runner import QueueWorker, Runner
from gateway.queue.schedule import crash_message
from gateway.storage.local import LocalStorage
from gateway.store import Database
from gateway.store import outbox as outbox_store
from gateway.store.backend import create_database
from gateway.store.events import claim_events, defer_event, events_of, record_event
from gateway.store.faxes import (
    begin_submit,
    claim_faxes,
    claim_reports,
    defer_fax,
    defer_report,
    faxes_of,
    get_fax,
    mark_submitted,
)
from gateway.store.inbound import (
    InboundFax,
    InboundState,
    announce_inbound,
    claim_inbound,
    defer_inbound,
    get_inbound,
)
from gateway.store.jobs import advance, claim_jobs, create_job, defer_job, fail_job, get_job
from gateway.store.postgres import PostgresDatabase
from gateway.store.records import Fax, FaxState, Job, JobState, NewJob, new_job_id
from tests import samples
from tests.helpers import CALLER, DELIVERS, FROM_NUMBER, OUR_FAX_LINE, until
from tests.servers.postgres import StoreBackend
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.store_rows import T0, make_job, to_uploaded

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("store_backend")

# Due 1.5-2 s after a failure; the scan alone would look again only after a minute.
QUEUE = {"min_backoff_seconds": 1.5, "max_backoff_seconds": 2.0, "scan_interval_seconds": 60.0}
# How late after its due time a retry may happen.
LATE = 1.0
# Longest wait for anything the workers do.
WAIT = 10.0
# Rounds a worker may run from its failing try to its retry's effect: the failing round, the
# empty one before it sleeps, the retry, the empty one after. More means it polled.
ROUNDS = 5
SECRET = b"k" * 32
TTL = 7200


# -- part 1: retries on time --------------------------------------------------------------------


class Rounds:
    """The real worker as the runner sees it, with its rounds counted (nothing replaced)."""

    def __init__(self, worker: QueueWorker) -> None:
        self.worker = worker
        self.name: str = worker.name
        self.clock = worker.clock
        self.count = 0

    async def run_once(self) -> int:
        self.count += 1
        return int(await self.worker.run_once())

    async def next_due(self) -> float | None:
        return await self.worker.next_due()


@asynccontextmanager
async def running(config: Config, worker: Rounds) -> AsyncIterator[Runner]:
    """A real runner with one worker, on the configured (long) scan interval, never woken."""
    runner = Runner([worker], scan_interval=config.queue.scan_interval_seconds)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop(timeout=5)


async def first(read: Callable[[], Awaitable[T | None]]) -> T:
    """The first value `read` gives that is not None, polled within WAIT seconds."""
    found: list[T] = []

    async def ready() -> bool:
        value = await read()
        if value is not None:
            found.append(value)
        return bool(found)

    await until(ready, WAIT)
    return found[0]


def in_future(due: float) -> float:
    """`due`, checked to lie ahead: the retry really waits for it."""
    assert due - time.time() > 0.5, f"due {due - time.time():.3f} s from now"
    return due


def on_time(due: float, done_at: float, request: pytest.FixtureRequest) -> None:
    late = done_at - due
    # A test property (in a JUnit XML report), not an assertion: how late the retry came.
    request.node.user_properties.append(("retry_lateness_seconds", f"{late:.3f}"))
    assert 0 <= late <= LATE, f"the retry came {late:+.3f} s after its due time (bound {LATE} s)"


async def retried_on_time(
    config: Config,
    worker: Rounds,
    deferred: Callable[[], Awaitable[float | None]],
    repair: Callable[[], object],
    done: Callable[[], Awaitable[float | None]],
    request: pytest.FixtureRequest,
) -> None:
    """Run `worker` until its item is deferred (due ahead), `repair` the fault (in a thread),
    and check the item was `done` 0..LATE s after its due time, within ROUNDS rounds."""
    async with running(config, worker):
        due = in_future(await first(deferred))
        await asyncio.to_thread(repair)
        done_at = await first(done)
        rounds = worker.count
    on_time(due, done_at, request)
    assert rounds <= ROUNDS


@pytest.fixture
def open_store() -> Iterator[Callable[[Config], Awaitable[Database]]]:
    """Opens the store of a configuration; closed at teardown."""
    opened: list[Database] = []

    async def open_(config: Config) -> Database:
        db = await create_database(config).open()
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


@pytest.fixture
async def carrier_client(
    make_config: Callable[..., Config], sandbox: Sandbox
) -> AsyncIterator[VoxtelesysClient]:
    """A client of the sandbox that tries each request once (the queue does the retrying)."""
    config = make_config(sandbox.config_override())
    client = VoxtelesysClient.from_config(config.voxtelesys, retry=RetryPolicy.never())
    yield client
    await client.close()


async def prepared_job(db: Database, config: Config) -> str:
    """A job with one fax whose document is assembled (ready for upload)."""
    job_id = new_job_id()
    path = DataDir(config.data.dir).documents / f"{job_id}.pdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(samples.pdf(1))
    new = NewJob(
        id=job_id,
        sender="alice@example.com",
        auth_user=None,
        client_address="127.0.0.1",
        subject="Contract",
        message_id="<m-1@mail.example.com>",
        from_number=FROM_NUMBER,
        spool_path=path,
        recipients=(DELIVERS,),
    )
    await db.run(create_job, new)
    assert await db.run(
        advance,
        job_id,
        JobState.RECEIVED,
        JobState.PREPARED,
        document_path=path,
        document_type="application/pdf",
        pages=1,
    )
    return job_id


async def uploaded_fax(db: Database, config: Config, storage: LocalStorage) -> Fax:
    """The fax of a job whose document is stored and signed (ready to be POSTed)."""
    job_id = await prepared_job(db, config)
    stored = await storage.put(job_id, samples.pdf(1), "application/pdf")
    assert await db.run(
        advance,
        job_id,
        JobState.PREPARED,
        JobState.UPLOADED,
        storage_key=stored.key,
        document_url=stored.url,
        url_expires_at=stored.expires_at,
    )
    [fax] = await db.run(faxes_of, job_id)
    return fax


def local_storage(config: Config, directory: Path | None = None) -> LocalStorage:
    media = directory or DataDir(config.data.dir).media
    return LocalStorage(media, config.http.public_url, SECRET, TTL)


async def job_row(db: Database, job_id: str) -> Job:
    job = await db.run(get_job, job_id)
    assert job is not None
    return job


async def fax_row(db: Database, fax_id: int) -> Fax:
    fax = await db.run(get_fax, fax_id)
    assert fax is not None
    return fax


async def test_upload_retries_a_deferred_job_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """jobs (upload): a job whose storage failed is uploaded 0-1 s after its due time, unwoken."""
    config = make_config({"queue": QUEUE})
    db = await open_store(config)
    blocked = tmp_path / "media"
    blocked.write_bytes(b"")  # a file where the storage directory goes: every put fails
    job_id = await prepared_job(db, config)
    worker = Rounds(
        UploadWorker(config=config, db=db, clock=time.time, storage=local_storage(config, blocked))
    )

    async def deferred() -> float | None:
        job = await job_row(db, job_id)
        return job.next_attempt_at if job.attempts == 1 and job.pickups == 0 else None

    async def uploaded() -> float | None:
        job = await job_row(db, job_id)
        return job.updated_at if job.state is JobState.UPLOADED else None

    await retried_on_time(config, worker, deferred, blocked.unlink, uploaded, request)
    assert (await job_row(db, job_id)).attempts == 0  # the new stage starts afresh


async def test_submit_retries_a_deferred_fax_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
    sandbox: Sandbox,
    carrier_client: VoxtelesysClient,
) -> None:
    """faxes (submit): a fax whose POST got a 503 is at the carrier 0-1 s after its due time."""
    config = make_config({"queue": QUEUE, **sandbox.config_override()})
    db = await open_store(config)
    storage = local_storage(config)
    fax = await uploaded_fax(db, config, storage)
    sandbox.fail_next(10, status=503, method="POST", path="/api/v1/faxes")
    worker = Rounds(
        SubmitWorker(config=config, db=db, clock=time.time, client=carrier_client, storage=storage)
    )

    async def deferred() -> float | None:
        row = await fax_row(db, fax.id)
        ready = row.submit_attempts == 1 and row.pickups == 0 and row.error_description
        return row.next_attempt_at if ready and row.state is FaxState.PENDING else None

    async def submitted() -> float | None:
        row = await fax_row(db, fax.id)
        return row.submitted_at if row.state is FaxState.SUBMITTED else None

    await retried_on_time(config, worker, deferred, sandbox.clear_faults, submitted, request)
    answered = await asyncio.to_thread(sandbox.requests, "/faxes", "POST")
    assert [entry["status"] for entry in answered] == [503, 200]


async def test_events_retries_a_deferred_event_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
    sandbox: Sandbox,
    carrier_client: VoxtelesysClient,
) -> None:
    """events: an event whose GET /faxes/{id} got a 503 is applied 0-1 s after its due time."""
    config = make_config({"queue": QUEUE, **sandbox.config_override()})
    db = await open_store(config)
    fax = await uploaded_fax(db, config, local_storage(config))
    job = await job_row(db, fax.job_id)
    assert job.document_url is not None
    assert await db.run(begin_submit, fax.id, time.time(), job.document_url) is not None
    sent = await carrier_client.send_fax(fax.recipient, FROM_NUMBER, job.document_url)
    assert await db.run(mark_submitted, fax.id, sent.id, sent.status)
    assert await db.run(record_event, sent.id, "queued", "outbound", {}, time.time())
    sandbox.fail_next(10, status=503, method="GET", path=f"/api/v1/faxes/{sent.id}")
    renderer = MailRenderer(config.templates.dir)
    outbox_dir = DataDir(config.data.dir).outbox
    reporter = Reporter(config=config, db=db, renderer=renderer, outbox_dir=outbox_dir)
    worker = Rounds(
        EventsWorker(
            config=config, db=db, clock=time.time, client=carrier_client, reporter=reporter
        )
    )

    async def deferred() -> float | None:
        [event] = await db.run(events_of, sent.id)
        return event.next_attempt_at if event.attempts == 1 and event.pickups == 0 else None

    async def applied() -> float | None:
        [event] = await db.run(events_of, sent.id)
        return event.processed_at

    await retried_on_time(config, worker, deferred, sandbox.clear_faults, applied, request)
    [event] = await db.run(events_of, sent.id)
    assert event.error is None  # applied, not dropped


async def test_reports_retries_a_deferred_report_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
) -> None:
    """reports: a report whose mail could not be written is queued 0-1 s after its due time."""
    config = make_config({"queue": QUEUE})
    db = await open_store(config)
    job_id = await prepared_job(db, config)
    [failed] = await db.run(fail_job, job_id, "the carrier refused the fax: bad number")
    outbox_dir = DataDir(config.data.dir).outbox
    outbox_dir.parent.mkdir(parents=True, exist_ok=True)
    outbox_dir.write_bytes(b"")  # a file where the outbox directory goes: writing mail fails
    documents = DocumentWorkers(config)
    worker = Rounds(
        ReportsWorker(
            config=config,
            db=db,
            clock=time.time,
            renderer=MailRenderer(config.templates.dir),
            outbox_dir=outbox_dir,
            documents=documents,
        )
    )

    async def deferred() -> float | None:
        row = await fax_row(db, failed.id)
        ready = row.report_attempts == 1 and row.report_pickups == 0
        return row.report_due_at if ready and row.reported_at is None else None

    async def reported() -> float | None:
        return (await fax_row(db, failed.id)).reported_at

    try:
        await retried_on_time(config, worker, deferred, outbox_dir.unlink, reported, request)
    finally:
        await documents.stop()
    assert (await fax_row(db, failed.id)).report_error is None
    assert await mail_status(db, f"report:{failed.id}:failed") is not None


@dataclass
class MediaServer:
    """A media server on a free port that answers 503 while `failing` is set."""

    url: str = ""
    failing: bool = True
    hits: list[tuple[int, float]] = field(default_factory=list)  # (status, time.time())


@pytest.fixture
async def media_server() -> AsyncIterator[MediaServer]:
    state = MediaServer()
    document = samples.tiff(1)

    async def serve(request: web.Request) -> web.Response:
        status = 503 if state.failing else 200
        state.hits.append((status, time.time()))
        if status != 200:
            raise web.HTTPServiceUnavailable()
        return web.Response(body=document, content_type="image/tiff")

    app = web.Application()
    app.router.add_get("/media/{name}", serve)
    server = HttpServer(app, Address("127.0.0.1", 0))
    await server.start()
    state.url = f"http://127.0.0.1:{server.port}"
    yield state
    await server.stop()


async def test_inbound_retries_a_deferred_download_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
    media_server: MediaServer,
) -> None:
    """inbound: a fax whose media answered 503 is downloaded 0-1 s after its due time."""
    config = make_config(
        {
            "queue": QUEUE,
            "inbound": {"default_recipients": ["office@example.com"]},
            # The media is on the carrier's own origin, the one private address it may use.
            "voxtelesys": {"base_url": f"{media_server.url}/api/v1"},
        }
    )
    db = await open_store(config)
    inbound_id = await db.run(
        announce_inbound,
        carrier_id="in-1",
        from_number=CALLER,
        to_number=OUR_FAX_LINE,
        pages=1,
        duration=30,
        fax_time=None,
        media_url=f"{media_server.url}/media/in-1",
        now=time.time(),
    )
    assert inbound_id is not None
    documents = DocumentWorkers(config)
    worker = Rounds(
        InboundWorker(
            config=config,
            db=db,
            documents=documents,
            clock=time.time,
            renderer=MailRenderer(config.templates.dir),
            outbox_dir=DataDir(config.data.dir).outbox,
        )
    )

    async def row() -> InboundFax:
        fax = await db.run(get_inbound, inbound_id)
        assert fax is not None
        return fax

    async def deferred() -> float | None:
        fax = await row()
        ready = fax.attempts == 1 and fax.pickups == 0 and fax.error is not None
        return fax.next_attempt_at if ready and fax.state is InboundState.ANNOUNCED else None

    async def downloaded() -> float | None:
        if (await row()).state is InboundState.ANNOUNCED:
            return None
        return next(at for status, at in media_server.hits if status == 200)

    def repair() -> None:
        media_server.failing = False

    try:
        await retried_on_time(config, worker, deferred, repair, downloaded, request)
    finally:
        await documents.stop()
    assert [status for status, _ in media_server.hits] == [503, 200]


def a_mail() -> Any:
    return build_message(
        from_address="fax-gateway@example.com",
        to=["alice@example.com"],
        rendered=RenderedMail(subject="Fax delivered", text="Delivered.\n", html=None),
        message_id_domain="fax.example.com",
    )


async def test_outbox_retries_a_deferred_mail_within_a_second_of_its_due_time(
    make_config: Callable[..., Config],
    open_store: Callable[[Config], Awaitable[Database]],
    request: pytest.FixtureRequest,
    relay_server: CapturingRelay,
) -> None:
    """outbox: a mail the relay was down for is sent 0-1 s after its due time, unwoken."""
    config = make_config({"queue": QUEUE, "relay": relay_server.relay_config_overrides()})
    db = await open_store(config)
    key = "report:1:delivered"
    outbox_dir = DataDir(config.data.dir).outbox
    assert await queue_mail(
        db,
        outbox_dir,
        key=key,
        kind="delivered",
        message=a_mail(),
        recipients=["alice@example.com"],
    )
    relay_server.go_down()
    worker = Rounds(OutboxWorker(config=config, db=db, clock=time.time, relay=create_relay(config)))

    async def deferred() -> float | None:
        message = await mail_status(db, key)
        assert message is not None
        ready = message.attempts == 1 and message.pickups == 0 and message.error is not None
        return message.next_attempt_at if ready else None

    async def sent() -> float | None:
        message = await mail_status(db, key)
        assert message is not None
        return message.sent_at

    await retried_on_time(config, worker, deferred, relay_server.come_up, sent, request)
    assert len(relay_server.messages_to("alice@example.com")) == 1


# -- part 2: a restart keeps attempts, due times and pickups -----------------------------------

MAX_PICKUPS = 3
DELAY = 30.0  # the deferral's delay
LEASE = 60.0  # how far a claim pushes the due time, where the queue has a lease
STEP = 100.0  # between the crashed claims: past any lease
NUMBER = "+12015550101"


class Case:
    """One queue's store, as a worker uses it: make an item, claim, defer, read, hold."""

    name: str

    def make(self, conn: Any) -> Any:
        raise NotImplementedError

    def claim(self, conn: Any, now: float) -> list[Any]:
        """Ids claimed at `now` (a pickup counted on each)."""
        raise NotImplementedError

    def defer(self, conn: Any, item: Any, now: float) -> None:
        """Record a failed try at `now`, due again DELAY later."""
        raise NotImplementedError

    def progress(self, conn: Any, item: Any) -> tuple[int, float, int]:
        """(attempts, due time, pickups)."""
        raise NotImplementedError

    async def held(self, db: Database, config: Config, item: Any, now: float) -> str:
        """Assert the item is held (this queue's way); its error."""
        raise NotImplementedError


def _job_of(conn: Any, job_id: str) -> Job:
    job = get_job(conn, job_id)
    assert job is not None
    return job


def _fax_of(conn: Any, fax_id: int) -> Fax:
    fax = get_fax(conn, fax_id)
    assert fax is not None
    return fax


class Jobs(Case):
    name = "jobs"

    def make(self, conn: Any) -> str:
        return make_job(conn, recipients=(NUMBER,))

    def claim(self, conn: Any, now: float) -> list[str]:
        return [job.id for job in claim_jobs(conn, JobState.RECEIVED, now, 1, MAX_PICKUPS)]

    def defer(self, conn: Any, item: str, now: float) -> None:
        assert defer_job(conn, item, "document: temporarily unreadable", DELAY, now) == 1

    def progress(self, conn: Any, item: str) -> tuple[int, float, int]:
        job = _job_of(conn, item)
        return job.attempts, job.next_attempt_at, job.pickups

    async def held(self, db: Database, config: Config, item: str, now: float) -> str:
        job = await db.run(_job_of, item)
        assert job.state is JobState.HELD
        assert job.error == crash_message(MAX_PICKUPS, "preparing")
        return job.error


class Faxes(Case):
    name = "faxes"

    def make(self, conn: Any) -> int:
        job_id = make_job(conn, recipients=(NUMBER,))
        to_uploaded(conn, job_id)
        [fax] = faxes_of(conn, job_id)
        return fax.id

    def claim(self, conn: Any, now: float) -> list[int]:
        return [fax.id for fax, _job in claim_faxes(conn, now, 1, MAX_PICKUPS)]

    def defer(self, conn: Any, item: int, now: float) -> None:
        # As the submit stage does: the POST is recorded before it is made, then it failed.
        assert begin_submit(conn, item, now, "https://s3.example/document.pdf") == 1
        assert defer_fax(conn, item, "carrier: HTTP 503", DELAY, now)

    def progress(self, conn: Any, item: int) -> tuple[int, float, int]:
        fax = _fax_of(conn, item)
        return fax.submit_attempts, fax.next_attempt_at, fax.pickups

    async def held(self, db: Database, config: Config, item: int, now: float) -> str:
        fax = await db.run(_fax_of, item)
        job = await db.run(_job_of, fax.job_id)
        assert fax.state is FaxState.HELD and job.state is JobState.HELD
        assert fax.error_description is not None and job.error == fax.error_description
        return fax.error_description


class Events(Case):
    name = "events"
    carrier_id = "carrier-fax-1"

    def make(self, conn: Any) -> int:
        event_id = record_event(conn, self.carrier_id, "delivered", "outbound", {}, T0)
        assert event_id is not None
        return event_id

    def claim(self, conn: Any, now: float) -> list[int]:
        claimed, _held = claim_events(conn, now, 1, MAX_PICKUPS)
        return [event.id for event in claimed]

    def defer(self, conn: Any, item: int, now: float) -> None:
        assert defer_event(conn, item, "carrier: HTTP 503", now + DELAY, now) == 1

    def progress(self, conn: Any, item: int) -> tuple[int, float, int]:
        [event] = events_of(conn, self.carrier_id)
        return event.attempts, event.next_attempt_at, event.pickups

    async def held(self, db: Database, config: Config, item: int, now: float) -> str:
        [event] = await db.run(events_of, self.carrier_id)
        assert event.processed_at == now
        assert event.error == crash_message(MAX_PICKUPS, "applying the event")
        return event.error


class Reports(Case):
    name = "reports"

    def make(self, conn: Any) -> int:
        job_id = make_job(conn, recipients=(NUMBER,))
        [fax] = fail_job(conn, job_id, "the carrier refused the fax", now=T0)
        return fax.id

    def claim(self, conn: Any, now: float) -> list[int]:
        claimed, _held = claim_reports(conn, now, 1, MAX_PICKUPS)
        return [fax.id for fax, _job in claimed]

    def defer(self, conn: Any, item: int, now: float) -> None:
        assert defer_report(conn, item, "OSError: disk full", now + DELAY, now) == 1

    def progress(self, conn: Any, item: int) -> tuple[int, float, int]:
        fax = _fax_of(conn, item)
        return fax.report_attempts, fax.report_due_at, fax.report_pickups

    async def held(self, db: Database, config: Config, item: int, now: float) -> str:
        fax = await db.run(_fax_of, item)
        assert fax.reported_at == now
        assert fax.report_error == crash_message(MAX_PICKUPS, "writing its report")
        return fax.report_error


class Inbound(Case):
    name = "inbound"

    def make(self, conn: Any) -> int:
        inbound_id = announce_inbound(
            conn,
            carrier_id="in-1",
            from_number=CALLER,
            to_number=OUR_FAX_LINE,
            pages=1,
            duration=30,
            fax_time=None,
            media_url="http://127.0.0.1:9/media/in-1",
            now=T0,
        )
        assert inbound_id is not None
        return inbound_id

    def _claim(self, conn: Any, now: float) -> tuple[list[InboundFax], list[InboundFax]]:
        return claim_inbound(
            conn,
            InboundState.ANNOUNCED,
            now,
            max_pickups=MAX_PICKUPS,
            lease=lambda _pickups: LEASE,
        )

    def claim(self, conn: Any, now: float) -> list[int]:
        claimed, _held = self._claim(conn, now)
        return [fax.id for fax in claimed]

    def defer(self, conn: Any, item: int, now: float) -> None:
        # The claim counted the attempt; the deferral keeps that count.
        assert defer_inbound(conn, item, "download: HTTP 503", now + DELAY, now) == 1

    def progress(self, conn: Any, item: int) -> tuple[int, float, int]:
        fax = get_inbound(conn, item)
        assert fax is not None
        return fax.attempts, fax.next_attempt_at, fax.pickups

    async def held(self, db: Database, config: Config, item: int, now: float) -> str:
        # The store hands the fax back as held; the worker's job is to dead-letter it.
        _claimed, held = await db.run(self._claim, now)
        assert [fax.id for fax in held] == [item]
        # Held: dead-lettered without reading the document, so no worker process is started.
        worker = InboundWorker(
            config=config,
            db=db,
            documents=DocumentWorkers(config),
            clock=lambda: now,
            renderer=MailRenderer(config.templates.dir),
            outbox_dir=DataDir(config.data.dir).outbox,
        )
        assert await worker.run_once() == 1
        fax = await db.run(get_inbound, item)
        assert fax is not None and fax.state is InboundState.DEAD
        assert fax.error is not None
        assert crash_message(MAX_PICKUPS, "fetching the document") in fax.error
        return fax.error


class Outbox(Case):
    name = "outbox"

    def make(self, conn: Any) -> int:
        assert outbox_store.enqueue(
            conn,
            key="report:1:delivered",
            kind="delivered",
            recipients=["alice@example.com"],
            message_path=Path("/nonexistent/outbox/1.eml"),
            now=T0,
        )
        [message] = outbox_store.list_messages(conn)
        return message.id

    def claim(self, conn: Any, now: float) -> list[int]:
        claimed = outbox_store.claim_due(conn, now, 1, LEASE, MAX_PICKUPS)
        return [message.id for message in claimed]

    def defer(self, conn: Any, item: int, now: float) -> None:
        outbox_store.defer(conn, item, "relay: connection refused", DELAY, now)

    def progress(self, conn: Any, item: int) -> tuple[int, float, int]:
        message = outbox_store.get_message(conn, item)
        assert message is not None
        return message.attempts, message.next_attempt_at, message.pickups

    async def held(self, db: Database, config: Config, item: int, now: float) -> str:
        message = await db.run(outbox_store.get_message, item)
        assert message is not None and message.state is outbox_store.OutboxState.HELD
        assert message.error == crash_message(MAX_PICKUPS, "handing it to the relay")
        return message.error


CASES = [Jobs(), Faxes(), Events(), Reports(), Inbound(), Outbox()]


async def reopen(db: Database) -> Database:
    """What a restart (or a crash) does to the store: closed, opened again (from the file, or
    the same PostgreSQL schema)."""
    db.close()
    if isinstance(db, PostgresDatabase):
        return await PostgresDatabase(db.dsn).open()
    return await Database(db.path).open()


@pytest.fixture
def store(tmp_path: Path, store_backend: StoreBackend) -> Database:
    """The test's store, not opened yet."""
    return store_backend.database(tmp_path / "data")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_a_restart_keeps_attempts_and_due_time(case: Case, store: Database) -> None:
    """A deferred item has the same attempts and due time after a restart, and is claimed at
    its due time, not a moment before."""
    db = await store.open()
    try:
        item = await db.run(case.make)
        assert await db.run(case.claim, T0) == [item]
        await db.run(case.defer, item, T0 + 1)
        before = await db.run(case.progress, item)
        assert before == (1, T0 + 1 + DELAY, 0)
        db = await reopen(db)
        assert await db.run(case.progress, item) == before
        due = before[1]
        assert await db.run(case.claim, due - 0.001) == []
        assert await db.run(case.claim, due) == [item]
    finally:
        db.close()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_pickups_survive_crashes_until_the_item_is_held(
    case: Case, store: Database, make_config: Callable[..., Config]
) -> None:
    """Each claim that ends in a crash (no outcome, store reopened) keeps its pickup, and after
    max_pickups of them the next claim holds the item instead of taking it."""
    config = make_config({"queue": {"max_pickups": MAX_PICKUPS}})
    db = await store.open()
    try:
        item = await db.run(case.make)
        for crash in range(1, MAX_PICKUPS + 1):
            assert await db.run(case.claim, T0 + crash * STEP) == [item]
            db = await reopen(db)  # the process died before the step recorded an outcome
            assert (await db.run(case.progress, item))[2] == crash
        now = T0 + (MAX_PICKUPS + 1) * STEP
        assert await db.run(case.claim, now) == []
        reason = await case.held(db, config, item, now)
        assert f"crashed {MAX_PICKUPS} times" in reason
        db = await reopen(db)
        assert await db.run(case.claim, now + STEP) == []  # held for good, not claimed again
    finally:
        db.close()
