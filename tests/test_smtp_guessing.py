"""AUTH under attack on a real SMTP server (implicit TLS on loopback): parallel guesses from one
address, guesses spread over many addresses against one account, and the bounds on concurrent
scrypt checks. Client addresses are 127.0.0.x loopback sources."""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config import Config
from gateway.smtp import users as users_module
from tests.helpers import until
from tests.servers.smtp import Certs, Running, running_smtp
from tests.test_smtp_server import PASSWORD, tls_override

# Parallel sessions in these tests all come from few addresses: lift the connection caps.
OPEN = {"max_connections": 500, "max_connections_per_ip": 500}
# Longest wait for a burst's sessions to be ready, and again for their answers.
BURST_WITHIN = 45.0


@dataclass
class Checks:
    """Every scrypt check the server made, and the most that ran at once (overall, per name)."""

    count: int = 0
    running: int = 0
    most: int = 0
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Checks:
    """Count the password checks Users.verify makes (real scrypt, optionally slowed down)."""
    seen = Checks()
    real = users_module.verify_password

    def counted(password: bytes, encoded: str) -> bool:
        with seen.lock:
            seen.count += 1
            seen.running += 1
            seen.most = max(seen.most, seen.running)
        try:
            if seen.delay:
                time.sleep(seen.delay)  # stands for a slow scrypt on a loaded machine
            return real(password, encoded)
        finally:
            with seen.lock:
                seen.running -= 1

    monkeypatch.setattr(users_module, "verify_password", counted)
    return seen


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"scanner:{users_module.hash_password(PASSWORD, log2_n=4)}\n")
    return path


@asynccontextmanager
async def guarded(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, **smtp: Any
) -> AsyncIterator[Running]:
    override = tls_override(certs, users_file, tls_listen="127.0.0.1:0", **{**OPEN, **smtp})
    async with running_smtp(make_config(override)) as gw:
        yield gw


async def _line(reader: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\r\n")


async def _reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = await _line(reader)
        if not line or line[3:4] != "-":
            return line


@asynccontextmanager
async def session(
    port: int, certs: Certs, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TLS session from `source` that has said EHLO."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=certs.client_context(), local_addr=(source, 0)
    )
    try:
        assert (await _reply(reader)).startswith("220 ")
        writer.write(b"EHLO client.example\r\n")
        assert (await _reply(reader)).startswith("250 ")
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def auth(
    port: int,
    certs: Certs,
    password: str,
    source: str = "127.0.0.1",
    gate: Gate | None = None,
    user: str = "scanner",
) -> str:
    """One AUTH PLAIN in its own session; the reply line. A `gate` holds it until all are ready."""
    async with session(port, certs, source) as (reader, writer):
        if gate is not None:
            gate.ready += 1
            await gate.start.wait()
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        writer.write(f"AUTH PLAIN {blob}\r\n".encode())
        return await _reply(reader)


@dataclass
class Gate:
    ready: int = 0
    start: asyncio.Event = field(default_factory=asyncio.Event)


async def burst(port: int, certs: Certs, attempts: list[tuple[str, str]]) -> list[str]:
    """(password, source) attempts whose AUTH lines all go out in the same instant, once every
    session has its TLS handshake and EHLO done."""
    gate = Gate()
    tasks = [
        asyncio.create_task(auth(port, certs, password, source, gate))
        for password, source in attempts
    ]
    # A bound, not a measure: 100 TLS handshakes share two loaded cores with everything else.
    deadline = time.monotonic() + BURST_WITHIN
    while gate.ready < len(tasks) and not any(t.done() for t in tasks):
        assert time.monotonic() < deadline, f"{gate.ready} of {len(tasks)} sessions ready"
        await asyncio.sleep(0.01)
    gate.start.set()
    return await asyncio.wait_for(asyncio.gather(*tasks), BURST_WITHIN)


def codes(lines: list[str]) -> list[int]:
    return [int(line[:3]) for line in lines]


async def test_parallel_guesses_from_one_address_get_at_most_max_failures_checks(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, checks: Checks
) -> None:
    """100 AUTH lines sent at once from one address, auth_max_failures = 5: at most 5 scrypt
    checks (535 each), every other attempt 454 4.7.0 unchecked, one lockout line."""
    async with guarded(make_config, certs, users_file, auth_max_failures=5) as gw:
        assert gw.server.tls_port is not None
        with structlog.testing.capture_logs() as logs:
            lines = await burst(
                gw.server.tls_port, certs, [(f"guess-{i}", "127.0.0.1") for i in range(100)]
            )
    assert checks.count <= 5, checks.count
    assert set(codes(lines)) <= {535, 454}, lines
    assert codes(lines).count(535) == checks.count >= 1
    assert all(line.startswith("454 4.7.0 ") for line in lines if line.startswith("454"))
    locked = [e for e in logs if e["event"] == "smtp.auth_locked"]
    assert len(locked) == 1, locked
    # 95 refusals are not 95 log lines.
    assert len([e for e in logs if e["event"] == "smtp.auth_refused"]) <= 1


async def test_guesses_spread_over_addresses_lock_the_account_not_its_known_address(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, checks: Checks
) -> None:
    """40 addresses guess one user's password at once, auth_account_max_failures = 4: at most
    4 checks, the account locked once (the right password from a new address gets 454), while
    the address it logged in from before still logs in."""
    async with guarded(
        make_config, certs, users_file, auth_max_failures=5, auth_account_max_failures=4
    ) as gw:
        port = gw.server.tls_port
        assert port is not None
        assert (await auth(port, certs, PASSWORD, "127.0.0.200")).startswith("235 ")
        checks.count = 0
        with structlog.testing.capture_logs() as logs:
            lines = await burst(
                port, certs, [(f"guess-{i}", f"127.0.0.{10 + i}") for i in range(40)]
            )
            fresh = await auth(port, certs, PASSWORD, "127.0.0.201")
            known = await auth(port, certs, PASSWORD, "127.0.0.200")
    assert checks.count <= 4 + 1, checks.count  # the guesses, and the known address's login
    assert codes(lines).count(535) <= 4
    assert set(codes(lines)) <= {535, 454}, lines
    assert fresh.startswith("454 4.7.0 "), fresh
    assert known.startswith("235 "), known
    account_locked = [e for e in logs if e["event"] == "smtp.auth_account_locked"]
    assert len(account_locked) == 1, account_locked
    assert account_locked[0]["user"] == "scanner"
    assert not any(e["event"] == "smtp.auth_locked" for e in logs)  # no address reached 5


async def test_concurrent_checks_are_bounded_overall_and_queued_not_refused(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, checks: Checks
) -> None:
    """20 correct logins at once from 20 addresses, auth_max_concurrent_checks = 3: all 235,
    never more than 3 scrypt checks running at the same time."""
    checks.delay = 0.05
    async with guarded(make_config, certs, users_file, auth_max_concurrent_checks=3) as gw:
        assert gw.server.tls_port is not None
        lines = await burst(
            gw.server.tls_port, certs, [(PASSWORD, f"127.0.0.{10 + i}") for i in range(20)]
        )
    assert codes(lines) == [235] * 20, lines
    assert checks.count == 20
    assert checks.most <= 3, checks.most


async def test_concurrent_checks_per_address_are_bounded(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, checks: Checks
) -> None:
    """8 correct logins at once from one address: all 235, at most 2 checked at a time."""
    checks.delay = 0.05
    async with guarded(make_config, certs, users_file, auth_max_concurrent_checks=8) as gw:
        assert gw.server.tls_port is not None
        lines = await burst(gw.server.tls_port, certs, [(PASSWORD, "127.0.0.1")] * 8)
    assert codes(lines) == [235] * 8, lines
    assert checks.most <= 2, checks.most


async def test_a_guess_abandoned_mid_check_still_counts(
    make_config: Callable[..., Config], certs: Certs, users_file: Path, checks: Checks
) -> None:
    """A client that hangs up while its password is checked is counted as a failure: hanging up
    does not buy unlimited checks."""
    checks.delay = 0.2

    def checking(count: int) -> Callable[[], Awaitable[bool]]:
        async def started() -> bool:
            return checks.running > 0 and checks.count == count

        return started

    async def idle() -> bool:
        return checks.running == 0

    async with guarded(make_config, certs, users_file, auth_max_failures=2) as gw:
        port = gw.server.tls_port
        assert port is not None
        for attempt in range(2):
            async with session(port, certs) as (_reader, writer):
                blob = base64.b64encode(b"\0scanner\0wrong").decode()
                writer.write(f"AUTH PLAIN {blob}\r\n".encode())
                await writer.drain()
                await until(checking(attempt + 1))
            # the session is closed now, its check still running
        await until(idle)
        line = await auth(port, certs, PASSWORD)
    assert line.startswith("454 4.7.0 "), line
    assert checks.count == 2
