"""Outages under traffic: S3, the carrier, the relay and the store fail while mail comes in.

Each test runs a whole gateway (daemon.Gateway on the test's loop) with the sandbox carrier
and the capturing relay, sends MESSAGES messages (one fax number each) from a few SMTP clients
that retry a 4xx later like an MTA, breaks one dependency while they arrive, mends it, and then
checks what the faults issue promises: every message answered 250, every number faxed exactly
once, every fax reported exactly once, every job done. docs/RELIABILITY.md lists the figures
(each test prints one `OUTAGE {...}` line with -s).
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon import Gateway
from gateway.store.jobs import list_jobs
from tests import samples
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.seaweed import S3Server, _Weed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MESSAGES = 12
CLIENTS = 3
TRAFFIC_SECONDS = 120.0


def number(index: int) -> str:
    return f"+1201{8000000 + index:07d}"


class Traffic:
    """MESSAGES messages from CLIENTS threads; a 4xx or a lost connection is tried again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: dict[int, str] = {}
        self.retries: Counter[str] = Counter()
        self._todo = list(range(MESSAGES))
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + TRAFFIC_SECONDS
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        while time.monotonic() < self._deadline:
            with self._lock:
                if not self._todo:
                    return
                index = self._todo.pop(0)
            raw = samples.traffic_mail("outage", index, [number(index)])
            while time.monotonic() < self._deadline:
                try:
                    with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                        smtp.sendmail(
                            "alice@example.com", [f"{number(index).lstrip('+')}@fax.local"], raw
                        )
                    with self._lock:
                        self.accepted[index] = number(index)
                    break
                except smtplib.SMTPResponseException as exc:
                    self.retries[str(exc.smtp_code)] += 1
                except (OSError, smtplib.SMTPException) as exc:
                    self.retries[type(exc).__name__] += 1
                time.sleep(0.3)
            time.sleep(0.1)  # messages arrive over a while, not all at once

    def sent(self) -> int:
        with self._lock:
            return len(self.accepted)

    async def finish(self) -> None:
        for thread in self._threads:
            await asyncio.to_thread(thread.join, TRAFFIC_SECONDS)
        assert len(self.accepted) == MESSAGES, (self.accepted, self.retries)


async def until(condition: Callable[[], Awaitable[bool] | bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.1)


async def settled_and_counted(
    gw: Gateway, traffic: Traffic, sandbox: Sandbox, relay: CapturingRelay, name: str
) -> dict[str, Any]:
    """Wait until every fax is final and reported; assert once each; the figures."""
    await traffic.finish()
    expected = sorted(traffic.accepted.values())

    def faxes() -> list[dict[str, Any]]:
        return [f for f in sandbox.faxes() if f["direction"] == "outbound"]

    await until(
        lambda: len(faxes()) >= MESSAGES and all(f["status"] == "delivered" for f in faxes()),
        120,
        "every fax delivered",
    )
    await until(
        lambda: len({m.message["Message-ID"] for m in relay.messages}) >= MESSAGES,
        120,
        "a report for every fax",
    )

    async def jobs_done() -> bool:
        jobs = await gw.db.run(list_jobs)
        return len(jobs) == MESSAGES and all(str(j.state) == "done" for j in jobs)

    await until(jobs_done, 60, "every job done")
    faxed = Counter("+" + f["to"] for f in faxes())
    assert {n: faxed[n] for n in expected} == dict.fromkeys(expected, 1)
    assert sum(faxed.values()) == MESSAGES
    reports = Counter(str(m.message["Message-ID"]) for m in relay.messages)
    assert len(reports) == MESSAGES and sum(reports.values()) == MESSAGES
    figures = {
        "outage": name,
        "messages": MESSAGES,
        "accepted": len(traffic.accepted),
        "smtp_retries": dict(traffic.retries),
        "faxes": sum(faxed.values()),
        "duplicates": sum(faxed.values()) - MESSAGES,
        "reports": len(reports),
        "relay_copies": sum(reports.values()) - len(reports),
    }
    print("OUTAGE " + json.dumps(figures))
    return figures


async def test_s3_stopped_and_restarted_under_traffic(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SeaweedFS stopped while messages arrive, started again: uploads are deferred meanwhile,
    then every fax goes once and is reported once."""
    # The carrier fetches a document after its POST, from the bucket: a fetch while SeaweedFS
    # is down fails that fax at the carrier (4203, final with fax.resubmit_attempts = 0), the
    # carrier's verdict and not this test's subject (the gateway's own uploads). So no POST is
    # taken from just before the stop until the start, and S3 stops only once every fax the
    # carrier took has its document.
    (tmp_path / "weed").mkdir()
    weed = _Weed(tmp_path / "weed")  # its own SeaweedFS: the session's serves other tests
    await asyncio.to_thread(weed.start)
    try:
        s3: S3Server = weed.server("warmup", 0).with_new_bucket("outage")
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        async with gateway(s3.config_overrides()) as gw:
            traffic = Traffic(gw.smtp.port)
            await until(lambda: traffic.sent() >= 3, 60, "3 messages in")
            await asyncio.to_thread(
                sandbox.fail_next, 10**6, status=503, method="POST", path="/api/v1/faxes"
            )

            def documents_fetched() -> bool:
                faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
                return all(f["download"] is not None for f in faxes)

            await until(documents_fetched, 60, "the document of every fax the carrier took")
            await asyncio.to_thread(weed.stop)

            async def upload_deferred() -> bool:
                jobs = await gw.db.run(list_jobs)
                return any(
                    str(j.state) == "prepared" and j.attempts > 0 and "S3" in (j.error or "")
                    for j in jobs
                )

            await until(upload_deferred, 60, "an upload deferred while S3 is down")
            await until(lambda: traffic.sent() >= MESSAGES // 2, 60, "half the messages in")
            await asyncio.to_thread(weed.start)
            await asyncio.to_thread(sandbox.clear_faults)
            await settled_and_counted(gw, traffic, sandbox, relay_server, "s3 stopped, restarted")
    finally:
        await asyncio.to_thread(weed.stop)


async def test_carrier_answering_500_and_hanging_under_traffic(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """POST /faxes answers 500 twenty times and hangs past the client's timeout three times:
    each fax is still submitted once (an uncertain POST is looked up, not repeated)."""
    overrides = {"voxtelesys": {"timeout_seconds": 1.5, "attempts": 2}}
    async with gateway(overrides) as gw:
        sandbox.fail_next(20, status=500, method="POST", path="/api/v1/faxes")
        sandbox.slow(4, count=3, method="POST", path="/api/v1/faxes")
        traffic = Traffic(gw.smtp.port)
        figures = await settled_and_counted(
            gw, traffic, sandbox, relay_server, "carrier 500 x20 and hanging x3"
        )
    posts = sandbox.requests("/faxes", method="POST")
    assert sum(1 for p in posts if p["status"] == 500) == 20
    assert figures["duplicates"] == 0


async def test_relay_down_and_back_under_traffic(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """The relay refuses connections while every fax is delivered; once it is back, each
    report goes out once."""
    async with gateway() as gw:
        relay_server.go_down()
        traffic = Traffic(gw.smtp.port)
        await traffic.finish()
        await until(
            lambda: sum(f["status"] == "delivered" for f in sandbox.faxes()) >= MESSAGES,
            120,
            "every fax delivered while the relay is down",
        )
        assert relay_server.messages == []
        relay_server.come_up()
        await settled_and_counted(gw, traffic, sandbox, relay_server, "relay down, back")


async def test_store_locked_by_another_process_under_traffic(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Another process holds an exclusive lock on store.db for 6 s while messages arrive:
    the gateway waits or answers 4xx, nothing is lost or doubled once the lock is gone."""
    async with gateway() as gw:
        traffic = Traffic(gw.smtp.port)
        await until(lambda: traffic.sent() >= 2, 60, "2 messages in")
        code = (
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(6)\n"
            "db.execute('COMMIT')\n"
        )
        locker = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-c", code, str(gw.db.path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None
            assert await asyncio.to_thread(locker.stdout.readline) == "locked\n"
            await asyncio.to_thread(locker.wait, 30)
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
            if locker.stdout is not None:
                locker.stdout.close()
        await settled_and_counted(gw, traffic, sandbox, relay_server, "store locked 6 s")
