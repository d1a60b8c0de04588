"""The fax-to-email half of a gateway, in process: store, webhook server, workers.

Everything is real: the webhook endpoint on an aiohttp server on a free port, SQLite, the
outbox and the relay client. Workers are run until idle instead of waiting; time-based retries
move a shared clock forward instead of sleeping. Used by the fax-to-email test modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.callbacks.events import EventsWorker
from gateway.callbacks.reconcile import Reconciler
from gateway.callbacks.webhook import add_routes
from gateway.carrier.client import VoxtelesysClient
from gateway.config import Address, Config
from gateway.document.workers import DocumentWorkers
from gateway.inbound.worker import InboundWorker
from gateway.mailout.outbox import OutboxWorker
from gateway.mailout.relay import create_relay
from gateway.mailout.templates import MailRenderer
from gateway.ops.httpd import HttpServer, create_app
from gateway.outbound.reports import Reporter, ReportsWorker
from gateway.queue.backoff import RetryPolicy
from gateway.queue.runner import run_until_idle
from gateway.store import Database
from gateway.store.backend import create_database
from gateway.store.faxes import begin_submit, faxes_of, get_fax, mark_submitted
from gateway.store.jobs import advance, create_job, get_job
from gateway.store.records import Fax, Job, JobState, NewJob, new_job_id
from tests import samples
from tests.conftest import BASE_CONFIG, merge
from tests.helpers import FROM_NUMBER, OUR_FAX_LINE, Clock
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

TOKEN: str = BASE_CONFIG["http"]["webhook_token"]


@dataclass
class Harness:
    config: Config
    db: Database
    client: VoxtelesysClient
    url: str
    clock: Clock
    events: EventsWorker
    reports: ReportsWorker
    inbound: InboundWorker
    outbox: OutboxWorker
    reconciler: Reconciler
    documents: dict[str, bytes] = field(default_factory=dict)
    wakes: list[int] = field(default_factory=list)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/fax/{TOKEN}"

    async def post_webhook(self, body: dict[str, Any]) -> None:
        """POST `body` to the webhook endpoint as the carrier would; it must answer 200."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.webhook_url, json=body) as response,
        ):
            assert response.status == 200

    async def settle(self, *, reconcile: bool = False) -> int:
        """Run the fax-to-email workers (and the reconciler if asked) until none has work."""
        workers: list[Any] = [self.events, self.reports, self.inbound, self.outbox]
        if reconcile:
            workers.insert(0, self.reconciler)
        return await run_until_idle(workers, timeout=30)

    async def submit(
        self,
        to: str,
        *,
        subject: str = "Quarterly report",
        sender: str = "alice@example.com",
        message_id: str = "<original-1@mail.example.com>",
        pages: int = 2,
        notify: str | None = None,
    ) -> tuple[Job, Fax]:
        """An outbound fax through the jobs API, POSTed to the sandbox, recorded submitted."""
        job_id = new_job_id()
        document = samples.pdf(pages)
        path = self.config.data.dir / "documents" / f"{job_id}.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(document)
        self.documents[job_id] = document
        new = NewJob(
            id=job_id,
            sender=sender,
            auth_user=None,
            client_address="127.0.0.1",
            subject=subject,
            message_id=message_id,
            from_number=FROM_NUMBER,
            spool_path=path,
            recipients=(to,),
            notify=notify,
        )
        await self.db.run(create_job, new)
        await self.db.run(
            advance,
            job_id,
            JobState.RECEIVED,
            JobState.PREPARED,
            document_path=path,
            document_type="application/pdf",
            pages=pages,
        )
        url = f"{self.url}/documents/{job_id}"
        await self.db.run(advance, job_id, JobState.PREPARED, JobState.UPLOADED, document_url=url)
        [fax] = await self.db.run(faxes_of, job_id)
        await self.db.run(begin_submit, fax.id)
        sent = await self.client.send_fax(fax.recipient, FROM_NUMBER, url)
        assert await self.db.run(mark_submitted, fax.id, sent.id, sent.status)
        job = await self.db.run(get_job, job_id)
        stored = await self.db.run(get_fax, fax.id)
        assert job is not None and stored is not None
        return job, stored

    async def fax(self, fax_id: int) -> Fax:
        fax = await self.db.run(get_fax, fax_id)
        assert fax is not None
        return fax


def harness_config(
    make_config: Callable[..., Config],
    sandbox: Sandbox,
    relay: CapturingRelay,
    override: dict[str, Any] | None = None,
) -> Config:
    base = {
        "relay": relay.relay_config_overrides(),
        "inbound": {
            "routes": {OUR_FAX_LINE: ["fax-desk@example.com", "archive@example.com"]},
            "default_recipients": ["office@example.com"],
        },
    }
    return make_config(merge(merge(base, sandbox.config_override()), override or {}))


@asynccontextmanager
async def running(config: Config, clock: Clock | None = None) -> AsyncIterator[Harness]:
    """The fax-to-email half of a gateway on `config`: store, HTTP server, workers."""
    clock = clock or Clock()
    db = await create_database(config).open()
    client = VoxtelesysClient.from_config(config.voxtelesys, retry=RetryPolicy.never())
    renderer = MailRenderer(config.templates.dir)
    outbox_dir = config.data.dir / "outbox"
    documents: dict[str, bytes] = {}
    wakes: list[int] = []

    async def document(request: web.Request) -> web.Response:
        data = documents.get(request.match_info["job_id"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/pdf")

    app = create_app()
    add_routes(app, config=config, db=db, wake=lambda: wakes.append(1))
    app.router.add_get("/documents/{job_id}", document)
    server = HttpServer(app, Address("127.0.0.1", 0))
    await server.start()
    reporter = Reporter(config=config, db=db, renderer=renderer, outbox_dir=outbox_dir)
    document_workers = DocumentWorkers(config)
    harness = Harness(
        config=config,
        db=db,
        client=client,
        url=f"http://127.0.0.1:{server.port}",
        clock=clock,
        events=EventsWorker(config=config, db=db, client=client, reporter=reporter, clock=clock),
        reports=ReportsWorker(
            config=config,
            db=db,
            renderer=renderer,
            outbox_dir=outbox_dir,
            documents=document_workers,
            clock=clock,
        ),
        inbound=InboundWorker(
            config=config,
            db=db,
            documents=document_workers,
            renderer=renderer,
            outbox_dir=outbox_dir,
            client=client,
            clock=clock,
        ),
        outbox=OutboxWorker(config=config, db=db, relay=create_relay(config), clock=clock),
        reconciler=Reconciler(config=config, db=db, client=client, clock=clock),
        documents=documents,
        wakes=wakes,
    )
    try:
        yield harness
    finally:
        await document_workers.stop()
        await server.stop()
        await client.close()
        db.close()
