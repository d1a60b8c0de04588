"""The whole daemon, measured as a user would meet it (issue 12's list), each beside a baseline.

Every figure runs `python -m gateway serve` as a subprocess with all its workers, the sandbox
carrier answering at once and the capturing relay (tests/bench/daemon.py); the baselines are
processes of their own (tests/bench/baselines.py), measured in the same run:

1. accept rate, 10 KB and 1 MB PDFs, 10 persistent sessions: against a bare aiosmtpd and one
   that writes + fsyncs each message before its 250 (the targets use the durable one);
2. burst: N messages sent at once, faxes a second from the first 250 to the last POST /faxes,
   against the durable accept rate;
3. 250 -> POST /faxes at a steady 20 msg/s, 100 KB, local storage and SeaweedFS S3 (after a
   warm-up at that rate), against the same latency of single messages on an idle daemon;
4. webhooks answered 200 after their durable store, 10 connections, a new fax id each, against
   a bare aiohttp JSON endpoint; p50/p99 beside it, and the daemon's CPU time per webhook
   (the answer and the events worker's verification) against the bare endpoint's;
5. inbound webhook -> the relay's 250 for a 3-page PDF at 10 events/s, against single events
   on an idle daemon;
6. peak RSS with 20 concurrent 10 MB messages in DATA, against the idle daemon; and with N
   finished jobs in the store, against an empty store;
7. store scale: pickup of the next job and restart recovery (exec to `daemon.ready`) with 100,
   10,000 and 100,000 jobs, against the figure at 100.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.store.db import connect
from gateway.store.jobs import claim_jobs
from gateway.store.records import FaxState, JobState
from tests import samples
from tests.bench import load
from tests.bench.baselines import BaselineServer
from tests.bench.common import Result
from tests.bench.daemon import Daemon, cpu_seconds, thread_cpu_seconds

SESSIONS = 10
INBOX = "inbox@example.com"
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How much each figure sends: `make bench` (FULL) or `make bench-quick` (QUICK)."""

    rounds: int
    small: int  # 10 KB messages per accept round
    large: int  # 1 MB messages per accept round
    burst: int
    steady: int  # messages at 20 msg/s
    webhooks: int
    inbound: int
    big_messages: int  # concurrent messages of `big_size`
    big_size: int
    store_jobs: tuple[int, ...]


FULL = Sizes(3, 300, 30, 1000, 200, 5000, 50, 20, 10 * MB, (100, 10_000, 100_000))
QUICK = Sizes(1, 30, 4, 60, 20, 300, 5, 20, 1 * MB, (100, 2_000))


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _settle(daemon: Daemon, timeout: float = 120.0) -> None:
    """Wait until every job is final, every final fax reported and its mail sent, and the
    carrier has nothing running: the next figure starts from an idle daemon (the reports of
    one figure's faxes are not left to run during the next)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(daemon.store_path) as conn:
            busy = conn.execute(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'failed', 'cancelled')"
            ).fetchone()[0]
            unsent = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[
                0
            ]
            unreported = conn.execute(
                "SELECT count(*) FROM faxes WHERE finished_at IS NOT NULL AND reported_at IS NULL"
            ).fetchone()[0]
        if busy == 0 and unsent == 0 and unreported == 0 and daemon.sandbox.busy() == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not settle in {timeout} s")


def _post_times(daemon: Daemon, job_ids: list[str]) -> dict[str, float]:
    """When the carrier received each job's POST /faxes (the sandbox's created_at)."""
    created = {fax["id"]: _iso(fax["created_at"]) for fax in daemon.sandbox.faxes()}
    marks = ",".join("?" * len(job_ids))
    with sqlite3.connect(daemon.store_path) as conn:
        rows = conn.execute(
            f"SELECT job_id, carrier_id FROM faxes WHERE job_id IN ({marks})", job_ids
        ).fetchall()
    return {job: created[carrier] for job, carrier in rows if carrier in created}


def _wait_posted(daemon: Daemon, job_ids: list[str], timeout: float = 300.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = _post_times(daemon, job_ids)
        if len(times) == len(job_ids):
            return times
        time.sleep(0.2)
    raise RuntimeError(f"{len(job_ids)} jobs, not all POSTed within {timeout} s")


# The percentiles told of a latency under load.
PERCENTILES = {"p50": 0.5, "p99": 0.99}


def _under_load(
    what: str,
    steady: list[float],
    idle: list[float],
    idle_name: str,
    meaning: str,
    targets: dict[str, str],
) -> list[Result]:
    """A latency under load (each of PERCENTILES, `what` naming it as {label}) against the
    median of the same on an idle daemon; `targets` by label."""
    return [
        Result(
            what=what.format(label=label),
            unit="ms",
            gateway=load.percentile(steady, PERCENTILES[label]),
            baseline=_median(idle),
            baseline_name=idle_name,
            higher_is_better=False,
            meaning=meaning,
            target=target,
        )
        for label, target in targets.items()
    ]


# -- 1 and 2: accept rate and burst drain ----------------------------------------------------


async def accept(work: Path, sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    small, large = load.sized_pdf(10_000), load.sized_pdf(MB)
    bare = BaselineServer("smtp")
    spool = work / "durable-spool"
    spool.mkdir(parents=True)
    durable = BaselineServer("smtp", "--durable", str(spool))
    daemon = Daemon(work / "accept").start()
    durable_rates: list[float] = []
    try:
        for label, document, count in (("10 KB", small, sizes.small), ("1 MB", large, sizes.large)):
            figures: dict[str, list[float]] = {"bare": [], "durable": [], "gateway": []}
            for number in range(sizes.rounds):
                mails = load.mails(count + SESSIONS, document, tag=f"{label}-{number}-")
                warm, timed = mails[:SESSIONS], mails[SESSIONS:]
                await load.send(daemon.smtp_port, warm, SESSIONS)  # connections, caches
                await asyncio.to_thread(_settle, daemon)
                # The clients in a process of their own (load.accept_rate_apart says why).
                rate = load.accept_rate_apart
                figures["bare"].append(await rate(bare.port, timed, SESSIONS))
                figures["durable"].append(await rate(durable.port, timed, SESSIONS))
                figures["gateway"].append(await rate(daemon.smtp_port, timed, SESSIONS))
                await asyncio.to_thread(_settle, daemon)
            gateway = _median(figures["gateway"])
            if label == "10 KB":
                durable_rates = figures["durable"]
            for short, name, baseline, target in (
                ("bare", "bare aiosmtpd answering 250", _median(figures["bare"]), ""),
                (
                    "durable",
                    "aiosmtpd writing + fsyncing before 250",
                    _median(figures["durable"]),
                    ">= 0.7x" if label == "10 KB" else ">= 0.9x",
                ),
            ):
                results.append(
                    Result(
                        what=f"daemon accept {label} vs {short}",
                        unit="msg/s",
                        gateway=gateway,
                        baseline=baseline,
                        baseline_name=name,
                        higher_is_better=True,
                        meaning="the whole daemon (every worker on) accepts at {share} of the "
                        "baseline's rate",
                        target=target,
                    )
                )
        # 2. A burst: every message queued at once, then drained to the carrier.
        mails = load.mails(sizes.burst, small, tag="burst-")
        sent = await load.send(daemon.smtp_port, mails, SESSIONS)
        posted = await asyncio.to_thread(_wait_posted, daemon, [s.job_id for s in sent])
        drain = len(sent) / (max(posted.values()) - min(s.at for s in sent))
        results.append(
            Result(
                what=f"burst of {sizes.burst} x 10 KB drained",
                unit="faxes/s",
                gateway=drain,
                baseline=_median(durable_rates),
                baseline_name="durable aiosmtpd's accept rate",
                higher_is_better=True,
                meaning="first 250 to last POST /faxes at {share} of the durable accept rate",
                target=">= 0.7x",
            )
        )
        await asyncio.to_thread(_settle, daemon)
    finally:
        daemon.stop()
        bare.stop()
        durable.stop()
    return results


# -- 3: latency 250 -> POST at a steady rate --------------------------------------------------


async def _latencies(daemon: Daemon, mails: list[bytes], rate: float | None) -> list[float]:
    if rate is None:  # one at a time on an idle daemon
        sent = []
        for raw in mails:
            sent += await load.send(daemon.smtp_port, [raw], 1)
            await asyncio.to_thread(_wait_posted, daemon, [sent[-1].job_id])
    else:
        sent = await load.send(daemon.smtp_port, mails, SESSIONS, rate=rate)
    posted = await asyncio.to_thread(_wait_posted, daemon, [s.job_id for s in sent])
    return [1000 * (posted[s.job_id] - s.at) for s in sent]


async def latency(work: Path, sizes: Sizes, storage: str) -> list[Result]:
    document = load.sized_pdf(100_000)
    overrides: dict[str, Any] = {}
    env: dict[str, str] = {}
    weed = None
    if storage == "s3":
        from tests.servers.seaweed import _Weed

        (work / "seaweed").mkdir(parents=True)
        weed = _Weed(work / "seaweed")
        server = weed.server("bench", weed.start()).with_new_bucket("bench")
        overrides, env = server.config_overrides(), server.env
    try:
        with Daemon(work / f"latency-{storage}", overrides, env=env) as daemon:
            idle = await _latencies(daemon, load.mails(5, document, tag="idle-"), None)
            await asyncio.to_thread(_settle, daemon)
            # Warmed up at the same rate over the same sessions first: the document worker
            # pool grows to the sessions' concurrency on demand (a process and its imports,
            # ~0.7 s of CPU each), which a daemon under a steady load has done long before;
            # cold, the quick run's 20 messages measured those starts, not the steady state.
            await _latencies(daemon, load.mails(2 * SESSIONS, document, tag="warm-"), 20.0)
            await asyncio.to_thread(_settle, daemon)
            steady = await _latencies(daemon, load.mails(sizes.steady, document), 20.0)
            await asyncio.to_thread(_settle, daemon)
    finally:
        if weed is not None:
            weed.stop()
    return _under_load(
        f"250 -> POST {{label}}, 20 msg/s 100 KB, {storage}",
        steady,
        idle,
        "median of single messages on an idle daemon",
        "under a steady 20 msg/s, {ratio}x an idle message's latency",
        {"p50": "<= 30 ms", "p99": "<= 150 ms"},
    )


# -- 4: webhooks ------------------------------------------------------------------------------


async def _hammer(url: str, count: int, connections: int) -> tuple[float, list[float]]:
    """POST `count` fax webhooks (a new id each) over `connections` keep-alive connections:
    requests a second, and each request's time in ms."""
    times: list[float] = []
    ids = iter(range(count))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in ids:
                body = {
                    "type": "fax",
                    "id": str(uuid.uuid4()),
                    "status": "delivered",
                    "direction": "outbound",
                }
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"webhook answered {response.status}")
                times.append(1000 * (time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return count / elapsed, times


def _events_settled(daemon: Daemon, timeout: float = 120.0) -> None:
    """Until the events worker has applied (here: dropped) every stored event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(daemon.store_path) as conn:
            left = conn.execute("SELECT count(*) FROM events WHERE processed_at IS NULL")
            if left.fetchone()[0] == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"events not all processed in {timeout} s")


def _sandbox_thread() -> int:
    """The native id of the sandbox carrier's thread (tests/servers/sandbox.py names it)."""
    [thread] = [t for t in threading.enumerate() if t.name == "sandbox-carrier"]
    assert thread.native_id is not None
    return thread.native_id


async def webhooks(work: Path, sizes: Sizes) -> list[Result]:
    bare = BaselineServer("http")
    try:
        with Daemon(work / "webhooks") as daemon:
            carrier = _sandbox_thread()
            await _hammer(daemon.webhook_url, 50, SESSIONS)  # warm-up
            await asyncio.to_thread(_events_settled, daemon)
            before, carrier_before = cpu_seconds(daemon.pid), thread_cpu_seconds(carrier)
            started = time.perf_counter()
            rate, times = await _hammer(daemon.webhook_url, sizes.webhooks, SESSIONS)
            answering = 1000 * (cpu_seconds(daemon.pid) - before) / sizes.webhooks
            # The daemon's CPU for each webhook: its answer and the events worker's GET
            # /faxes/{id} (a new, unknown id each: dropped). Unlike the rates, CPU time per
            # request hardly moves with what else runs on the machine.
            await asyncio.to_thread(_events_settled, daemon)
            applied = sizes.webhooks / (time.perf_counter() - started)
            cpu = 1000 * (cpu_seconds(daemon.pid) - before) / sizes.webhooks
            # The sandbox carrier answering those GETs runs in this process, on the same two
            # cores: its share of each webhook, which a real carrier spends on its own machines.
            carrier_cpu = 1000 * (thread_cpu_seconds(carrier) - carrier_before) / sizes.webhooks
            bare_before = cpu_seconds(bare.proc.pid)
            base_rate, base_times = await _hammer(
                f"http://127.0.0.1:{bare.port}/webhooks/fax/x", sizes.webhooks, SESSIONS
            )
            bare_cpu = 1000 * (cpu_seconds(bare.proc.pid) - bare_before) / sizes.webhooks
    finally:
        bare.stop()
    results = [
        Result(
            what="webhooks answered 200, 10 connections",
            unit="req/s",
            gateway=rate,
            baseline=base_rate,
            baseline_name="bare aiohttp JSON 200",
            higher_is_better=True,
            meaning="durable webhooks at {share} of a bare endpoint's rate",
            target=">= 3,000 req/s",
        )
    ]
    for label, fraction, target in (("p50", 0.5, ""), ("p99", 0.99, "<= 20 ms")):
        results.append(
            Result(
                what=f"webhook time {label}",
                unit="ms",
                gateway=load.percentile(times, fraction),
                baseline=load.percentile(base_times, fraction),
                baseline_name="bare aiohttp JSON 200",
                higher_is_better=False,
                meaning="{ratio}x the bare endpoint's time per request",
                target=target,
            )
        )
    results += [
        Result(
            what="webhooks answered and verified",
            unit="req/s",
            gateway=applied,
            baseline=base_rate,
            baseline_name="bare aiohttp JSON 200",
            higher_is_better=True,
            meaning="from the first webhook to the last event applied: {share} of a bare"
            " endpoint's rate (its CPU per webhook below bounds it)",
        ),
        Result(
            what="daemon CPU per webhook, while answering",
            unit="ms",
            gateway=answering,
            baseline=bare_cpu,
            baseline_name="bare aiohttp JSON 200's CPU per request",
            higher_is_better=False,
            meaning="{ratio}x a bare answer's CPU, with what the events worker did meanwhile",
        ),
        Result(
            what="daemon CPU per webhook, with its GET",
            unit="ms",
            gateway=cpu,
            baseline=bare_cpu,
            baseline_name="bare aiohttp JSON 200's CPU per request",
            higher_is_better=False,
            meaning="each webhook (answer and verification) costs {ratio}x a bare answer's CPU",
        ),
        Result(
            what="sandbox carrier CPU per webhook",
            unit="ms",
            gateway=carrier_cpu,
            baseline=bare_cpu,
            baseline_name="bare aiohttp JSON 200's CPU per request",
            higher_is_better=False,
            meaning="the carrier stand-in's answers to the verification, on the same cores:"
            " {ratio}x a bare answer",
        ),
    ]
    return results


# -- 5: webhook -> inbox ----------------------------------------------------------------------


def _inbox_latencies(daemon: Daemon, count: int, rate: float | None) -> list[float]:
    document = samples.pdf(3)
    before = len(daemon.relay.messages_to(INBOX))
    started: list[float] = []
    begin = time.time()
    for n in range(count):
        if rate is not None:
            delay = begin + n / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        started.append(time.time())
        daemon.sandbox.inbound("+12015550100", f"+1201555{2000 + n:04d}", document)
        if rate is None:
            daemon.relay.wait_for_sync(before + n + 1, timeout=60)
            while len(daemon.relay.messages_to(INBOX)) < before + n + 1:
                time.sleep(0.01)
    deadline = time.monotonic() + 120
    while len(daemon.relay.messages_to(INBOX)) < before + count:
        if time.monotonic() > deadline:
            raise RuntimeError("inbound mails did not all arrive")
        time.sleep(0.05)
    arrived = sorted(m.path.stat().st_mtime for m in daemon.relay.messages_to(INBOX)[before:])
    return [1000 * (end - start) for start, end in zip(started, arrived, strict=True)]


async def inbox(work: Path, sizes: Sizes) -> list[Result]:
    overrides = {"inbound": {"default_recipients": [INBOX]}}
    with Daemon(work / "inbox", overrides) as daemon:
        idle = await asyncio.to_thread(_inbox_latencies, daemon, 3, None)
        steady = await asyncio.to_thread(_inbox_latencies, daemon, sizes.inbound, 10.0)
    return _under_load(
        "webhook -> inbox {label}, 10 events/s",
        steady,
        idle,
        "median of single events on an idle daemon",
        "at 10 events/s, {ratio}x an idle event's latency",
        {"p50": "<= 150 ms", "p99": ""},
    )


# -- 6 and 7: memory and store scale -----------------------------------------------------------


def fill_store(path: Path, jobs: int, *, queued: int = 0) -> None:
    """A store with `jobs` finished jobs (delivered, reported, cleaned up) and `queued` jobs
    just received, as a gateway that has run for a while holds them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    now = time.time()
    try:
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, jobs + queued, 10_000):
            batch = range(start, min(start + 10_000, jobs + queued))
            conn.executemany(
                "INSERT INTO jobs (id, state, created_at, updated_at, sender, subject,"
                " message_id, from_number, spool_path, stored_deleted_at)"
                " VALUES (?, ?, ?, ?, 'alice@example.com', 'Fax', '', '+12015550100', ?, ?)",
                [
                    (
                        f"bench{n:08d}",
                        JobState.DONE if n < jobs else JobState.RECEIVED,
                        now - 86400 * 30 + n,
                        now - 86400 * 30 + n,
                        f"/nonexistent/{n}.eml",
                        now if n < jobs else None,
                    )
                    for n in batch
                ],
            )
            conn.executemany(
                "INSERT INTO faxes (job_id, recipient, state, carrier_id, created_at,"
                " updated_at, finished_at, reported_at)"
                " VALUES (?, '+12015550123', ?, ?, ?, ?, ?, ?)",
                [
                    (
                        f"bench{n:08d}",
                        FaxState.DELIVERED if n < jobs else FaxState.PENDING,
                        f"carrier-{n}" if n < jobs else None,
                        now - 86400 * 30 + n,
                        now - 86400 * 30 + n,
                        now - 86400 * 30 + n if n < jobs else None,
                        now - 86400 * 30 + n if n < jobs else None,
                    )
                    for n in batch
                ],
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def pickup_ms(path: Path, jobs: int, tries: int = 20) -> float:
    """Median time to claim the next received job from a store of `jobs` finished ones."""
    fill_store(path, jobs, queued=tries)
    conn = connect(path)
    times = []
    try:
        for _ in range(tries):
            started = time.perf_counter()
            [job] = claim_jobs(conn, JobState.RECEIVED, time.time(), 1, 5)
            times.append(1000 * (time.perf_counter() - started))
            conn.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job.id,))
    finally:
        conn.close()
    return _median(times)


async def memory(work: Path, sizes: Sizes) -> list[Result]:
    results = []
    mails = load.mails(sizes.big_messages, load.sized_pdf(sizes.big_size), tag="big-")
    in_flight = sum(len(m) for m in mails)
    with Daemon(work / "memory-data") as daemon:
        await load.send(daemon.smtp_port, load.mails(5, load.sized_pdf(10_000)), 5)
        await asyncio.to_thread(_settle, daemon)
        idle = daemon.peak_rss()
        await load.send(daemon.smtp_port, mails, len(mails))
        peak = daemon.peak_rss()
        await asyncio.to_thread(_settle, daemon)
    results.append(
        Result(
            what=f"peak RSS, {len(mails)} x {sizes.big_size // MB} MB in DATA",
            unit="MB",
            gateway=peak / MB,
            baseline=idle / MB,
            baseline_name="the same daemon before them (peak)",
            higher_is_better=False,
            meaning=f"{in_flight / MB:.0f} MB in flight; target bound "
            f"{150 + 1.5 * in_flight / MB:.0f} MB",
            target=f"<= {150 + 1.5 * in_flight / MB:.0f} MB",
        )
    )
    stored = sizes.store_jobs[-1]
    peaks = []
    for jobs in (0, stored):
        directory = work / f"memory-store-{jobs}"
        fill_store(directory / "data" / "store.db", jobs)
        with Daemon(directory) as daemon:
            await load.send(daemon.smtp_port, load.mails(10, load.sized_pdf(10_000)), 5)
            await asyncio.to_thread(_settle, daemon)
            peaks.append(daemon.peak_rss())
    results.append(
        Result(
            what=f"peak RSS, {stored:,} jobs in the store",
            unit="MB",
            gateway=peaks[1] / MB,
            baseline=peaks[0] / MB,
            baseline_name="empty store",
            higher_is_better=False,
            meaning="{ratio}x the empty store's peak",
            target="within 20 MB",
        )
    )
    return results


async def scale(work: Path, sizes: Sizes) -> list[Result]:
    pickups: dict[int, float] = {}
    recoveries: dict[int, float] = {}
    for jobs in sizes.store_jobs:
        pickups[jobs] = await asyncio.to_thread(pickup_ms, work / f"pickup-{jobs}" / "s.db", jobs)
        directory = work / f"recovery-{jobs}"
        fill_store(directory / "data" / "store.db", jobs)
        daemon = Daemon(directory)
        try:
            daemon.start()
            recoveries[jobs] = daemon.started_seconds
        finally:
            daemon.stop()
    smallest = sizes.store_jobs[0]
    results = []
    for jobs in sizes.store_jobs[1:]:
        results.append(
            Result(
                what=f"pickup, {jobs:,} jobs",
                unit="ms",
                gateway=pickups[jobs],
                baseline=pickups[smallest],
                baseline_name=f"{smallest} jobs",
                higher_is_better=False,
                meaning="claiming the next job costs {ratio}x what it costs in a small store",
                target="<= 2x",
            )
        )
        results.append(
            Result(
                what=f"restart to ready, {jobs:,} jobs",
                unit="s",
                gateway=recoveries[jobs],
                baseline=recoveries[smallest],
                baseline_name=f"{smallest} jobs",
                higher_is_better=False,
                meaning="start-up and recovery take {ratio}x a small store's",
                target="<= 5 s" if jobs >= 100_000 else "",
            )
        )
    return results


FIGURES: dict[str, Callable[[Path, Sizes], Any]] = {
    "accept": accept,
    "latency-local": lambda work, sizes: latency(work, sizes, "local"),
    "latency-s3": lambda work, sizes: latency(work, sizes, "s3"),
    "webhooks": webhooks,
    "inbox": inbox,
    "memory": memory,
    "scale": scale,
}
