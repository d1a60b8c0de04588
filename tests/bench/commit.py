"""Group commit: durable job rows a second from 10 concurrent writers, grouped or one each.

Ten writers (as ten SMTP sessions would) each insert their share of K jobs one after another;
every insert is awaited until it is durable. The gateway's way is `GroupCommit.run(insert_job)`
(writes of one moment share a transaction and its fsync); the baseline is the same writers with
`Database.run(create_job)`, one transaction and one fsync per job. Both WAL, synchronous=FULL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.jobs import create_job, insert_job
from gateway.store.records import NewJob, new_job_id
from tests.bench.common import Result

WRITERS = 10


def _job() -> NewJob:
    return NewJob(
        id=new_job_id(),
        sender="alice@example.com",
        auth_user=None,
        client_address=None,
        subject="Fax",
        message_id="",
        from_number="+12015550100",
        spool_path=Path("/nonexistent"),
        recipients=("+12015550123",),
    )


async def _rate(path: Path, count: int, grouped: bool) -> tuple[float, float]:
    db = await Database(path).open()
    commits = GroupCommit(db)
    try:

        async def writer(share: int) -> None:
            for _ in range(share):
                if grouped:
                    await commits.run(insert_job, _job())
                else:
                    await db.run(create_job, _job())

        started = time.perf_counter()
        await asyncio.gather(*(writer(count // WRITERS) for _ in range(WRITERS)))
        elapsed = time.perf_counter() - started
        per_batch = commits.writes / commits.batches if commits.batches else 1.0
        return (count // WRITERS) * WRITERS / elapsed, per_batch
    finally:
        db.close()


def title(count: int) -> str:
    return f"Group commit, {count} jobs from {WRITERS} concurrent writers"


async def run(work: Path, count: int) -> list[Result]:
    grouped, per_batch = await _rate(work / "grouped.db", count, True)
    single, _ = await _rate(work / "single.db", count, False)
    return [
        Result(
            what="durable job rows, 10 writers",
            unit="jobs/s",
            gateway=grouped,
            baseline=single,
            baseline_name="one transaction (one fsync) per job",
            higher_is_better=True,
            meaning=f"grouped ({per_batch:.1f} writes a commit) at {{share}} of one each",
        )
    ]
