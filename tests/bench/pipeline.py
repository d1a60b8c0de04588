"""Pipeline throughput: jobs a second from `received` to `submitted` through the real workers.

K spooled jobs (each a mail with a 1-page PDF) go through prepare (extract, assemble, write the
document), upload (local storage: file written, signed /media URL) and submit (POST /faxes to
the sandbox carrier, with its commits before and after), run by `run_until_idle`. The baseline
is K raw POST /faxes calls of the same documents' URLs with the same carrier client. In both
runs the sandbox fetches each document from the gateway's HTTP server, so the carrier's side
costs the same; the ratio is the overhead of the queue around the carrier call.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from gateway.carrier.client import VoxtelesysClient
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.workers import DocumentWorkers
from gateway.ops.httpd import HttpServer, create_app
from gateway.outbound.prepare import PrepareWorker
from gateway.outbound.submit import SubmitWorker
from gateway.outbound.upload import UploadWorker
from gateway.queue.runner import run_until_idle
from gateway.storage import create_storage
from gateway.store import Database
from gateway.store.jobs import create_job
from gateway.store.records import JobState, NewJob, new_job_id
from gateway.store.spool import Spool
from tests import samples
from tests.bench.common import Result, bench_config
from tests.conftest import free_port
from tests.servers.sandbox import Sandbox

RECIPIENT = "+12015550123"
WARM_UP = 3  # jobs through the whole pipeline first: the client's connection, imports


def _job_ids_in(conn: sqlite3.Connection, state: JobState) -> list[str]:
    rows = conn.execute("SELECT id FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
    return [row[0] for row in rows]


def _document_urls(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT document_url FROM jobs WHERE id IN ({marks})", ids).fetchall()
    return [row[0] for row in rows]


class Pipeline:
    """The outbound stages of one gateway, its HTTP server (for /media) and its store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        data = DataDir(config.data.dir)
        self.db = Database(data.store)
        self.spool = Spool(data.spool)
        self.app = create_app()
        self.storage = create_storage(config, self.app)
        self.http = HttpServer(self.app, config.http.listen)
        self.client = VoxtelesysClient.from_config(config.voxtelesys)
        self.documents = DocumentWorkers(config)
        self.workers = [
            PrepareWorker(config=config, db=self.db, spool=self.spool, documents=self.documents),
            UploadWorker(config=config, db=self.db, storage=self.storage),
            SubmitWorker(config=config, db=self.db, client=self.client, storage=self.storage),
        ]

    async def start(self) -> None:
        await self.db.open()
        await self.http.start()
        await self.documents.start()

    async def stop(self) -> None:
        await self.documents.stop()
        await self.client.close()
        await self.http.stop()
        await asyncio.to_thread(self.db.close)

    async def queue(self, count: int) -> list[str]:
        """`count` jobs in `received`, as the SMTP handler leaves them (not timed)."""
        ids = []
        document = samples.pdf(1)
        for n in range(count):
            job_id = new_job_id()
            raw = samples.mail(samples.attachment(document, f"report-{n}.pdf"))
            path = await asyncio.to_thread(self.spool.write, job_id, raw)
            job = NewJob(
                id=job_id,
                sender="alice@example.com",
                auth_user=None,
                client_address="127.0.0.1",
                subject="Fax",
                message_id="",
                from_number=self.config.voxtelesys.from_number,
                spool_path=path,
                recipients=(RECIPIENT,),
            )
            await self.db.run(create_job, job)
            ids.append(job_id)
        return ids

    async def drain(self) -> None:
        await run_until_idle(self.workers, timeout=300)


def title(count: int) -> str:
    return f"Pipeline, {count} jobs received -> submitted against the sandbox carrier"


async def run(work: Path, count: int) -> list[Result]:
    sandbox = Sandbox().start()
    try:
        port = free_port()
        config = bench_config(
            work / "pipeline",
            {
                "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
                **sandbox.config_override(),
            },
        )
        pipeline = Pipeline(config)
        await pipeline.start()
        try:
            await pipeline.queue(WARM_UP)
            await pipeline.drain()
            ids = await pipeline.queue(count)
            started = time.perf_counter()
            await pipeline.drain()
            gateway = count / (time.perf_counter() - started)
            submitted = set(await pipeline.db.run(_job_ids_in, JobState.SUBMITTED))
            if not set(ids) <= submitted:
                raise RuntimeError(f"{len(set(ids) - submitted)} jobs did not reach submitted")

            # The same documents, posted again: the carrier fetches them the same way.
            urls = await pipeline.db.run(_document_urls, ids)
            client, from_number = pipeline.client, config.voxtelesys.from_number
            attempts = config.voxtelesys.attempts
            started = time.perf_counter()
            for url in urls:
                await client.send_fax(RECIPIENT, from_number, url, attempts)
            baseline = count / (time.perf_counter() - started)
        finally:
            await pipeline.stop()
    finally:
        sandbox.stop()
    return [
        Result(
            what="pipeline received->submitted",
            unit="jobs/s",
            gateway=gateway,
            baseline=baseline,
            baseline_name="raw POST /faxes with the carrier client",
            higher_is_better=True,
            meaning="each job costs {ratio}x its bare POST: parse, assemble, store the "
            "document, and the queue's commits around the call",
        )
    ]
