"""Connection limits on real servers on loopback: SMTP caps per address and in total, the junk
command and idle limits, HTTP caps and timeouts, and flood logging that stays a few lines.
Client addresses are 127.0.0.x loopback sources."""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from gateway.config import Address, Config, ConfigError
from gateway.ops.flood import LoopErrors
from gateway.ops.httpd import HttpServer, create_app
from tests import test_daemon
from tests.conftest import ROOT, cli_env
from tests.helpers import until
from tests.servers.smtp import running_smtp
from tests.test_daemon import GatewayProcess
from tests.test_smtp_server import RCPT, SENDER, Raw, pdf_mail


async def greeting(port: int, source: str = "127.0.0.1") -> tuple[str, Raw]:
    """Connect from `source`; the first line the server says, and the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    raw = Raw(reader, writer)
    line = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\r\n")
    return line, raw


async def refused(port: int, source: str = "127.0.0.1") -> str:
    """Connect from `source` and expect 421 then the end of the connection; the 421 line."""
    line, raw = await greeting(port, source)
    assert line.startswith("421 4.7.0 "), line
    assert await raw.closed()
    await raw.close()
    return line


async def test_connections_past_the_per_address_and_total_caps_get_421(
    make_config: Callable[..., Config],
) -> None:
    """max_connections_per_ip = 3, max_connections = 5: a 4th from one address and a 6th in all
    get 421 4.7.0 and are closed; a slot freed is usable again."""
    override = {"smtp": {"max_connections_per_ip": 3, "max_connections": 5}}
    async with running_smtp(make_config(override)) as gw:
        first = [await Raw.connect(gw.port) for _ in range(3)]
        assert "address" in await refused(gw.port)
        second = [await Raw.connect(gw.port, local_addr=("127.0.0.2", 0)) for _ in range(2)]
        assert "busy" in await refused(gw.port, "127.0.0.3")
        # The open sessions are unaffected.
        assert (await first[0].command("NOOP"))[0].startswith("250 ")
        await first.pop().close()

        async def admitted() -> bool:
            line, raw = await greeting(gw.port, "127.0.0.3")
            await raw.close()
            return line.startswith("220 ")

        await until(admitted, 5)
        for raw in first + second:
            await raw.close()


async def test_a_connection_flood_is_logged_once_with_counts(
    make_config: Callable[..., Config],
) -> None:
    """200 connections past the cap: 200 times 421, but one line at the first refusal and one
    summary with the counts (at the end of the minute, or at stop), not one line per accept."""
    override = {"smtp": {"max_connections_per_ip": 2}}
    with structlog.testing.capture_logs() as logs:
        async with running_smtp(make_config(override)) as gw:
            held = [await Raw.connect(gw.port) for _ in range(2)]
            started = time.monotonic()
            for _ in range(200):
                await refused(gw.port)
            assert time.monotonic() - started < 20
            during = [e for e in logs if "refused" in e["event"]]
            for raw in held:
                await raw.close()
    assert [e["event"] for e in during] == ["smtp.connection_refused"]
    summaries = [e for e in logs if e["event"] == "smtp.connections_refused"]
    assert len(summaries) == 1, summaries
    assert during[0]["client"] == "127.0.0.1"
    assert summaries[0]["count"] == 199
    assert summaries[0]["clients"] == {"127.0.0.1": 199}


async def test_noop_loop_is_closed_after_the_junk_limit(
    make_config: Callable[..., Config],
) -> None:
    """max_junk_commands = 5: five NOOP/RSET/HELP/VRFY are answered, the sixth gets 421 4.7.0
    and the connection is closed."""
    async with running_smtp(make_config({"smtp": {"max_junk_commands": 5}})) as gw:
        raw = await Raw.connect(gw.port)
        await raw.command("EHLO client.example")
        for command in ("NOOP", "RSET", "HELP", "VRFY <alice>", "NOOP"):
            assert (await raw.command(command))[0][:1] in "25", command
        [line] = await raw.command("NOOP")
        assert line.startswith("421 4.7.0 "), line
        assert await raw.closed()
        await raw.close()


async def test_refused_senders_and_recipients_count_toward_the_junk_limit(
    make_config: Callable[..., Config],
) -> None:
    """max_junk_commands = 5: a loop of refused MAIL and RCPT (a relay or number probe, a line
    of log each) gets 421 4.7.0 after the fifth refusal and the connection is closed."""
    async with running_smtp(make_config({"smtp": {"max_junk_commands": 5}})) as gw:
        raw = await Raw.connect(gw.port)
        await raw.command("EHLO client.example")
        assert (await raw.command("MAIL FROM:<alice@fax.local>"))[0].startswith("550 ")
        assert (await raw.command(f"MAIL FROM:<{SENDER}>"))[0].startswith("250 ")
        for n in range(4):
            [line] = await raw.command(f"RCPT TO:<1900555000{n}@fax.local>")
            assert line.startswith("550 "), line
        lines = await raw.command("RCPT TO:<someone@elsewhere.example>")
        if len(lines) == 1:  # the 421 may come in the same read or the next
            lines += await raw.reply()
        assert lines[0].startswith("550 ") and lines[1].startswith("421 4.7.0 "), lines
        assert await raw.closed()
        await raw.close()


async def test_a_queued_message_resets_the_junk_count(make_config: Callable[..., Config]) -> None:
    """A connection cached by an MTA (RSET before each message) lives on while messages go
    through: junk counts only since the last message queued."""
    async with running_smtp(make_config({"smtp": {"max_junk_commands": 2}})) as gw:
        raw = await Raw.connect(gw.port)
        await raw.command("EHLO client.example")
        for _ in range(3):
            assert (await raw.command("RSET"))[0].startswith("250 ")
            assert (await raw.command("NOOP"))[0].startswith("250 ")
            assert (await raw.command(f"MAIL FROM:<{SENDER}>"))[0].startswith("250 ")
            assert (await raw.command(f"RCPT TO:<{RCPT}>"))[0].startswith("250 ")
            assert (await raw.command("DATA"))[0].startswith("354 ")
            raw.writer.write(pdf_mail() + b"\r\n.\r\n")
            assert (await raw.reply())[0].startswith("250 2.0.0 queued as ")
        assert len(await gw.jobs()) == 3
        await raw.close()


async def test_noop_every_so_often_does_not_keep_a_session_alive(
    make_config: Callable[..., Config],
) -> None:
    """idle_timeout_seconds = 0.5: a client sending NOOP every 0.1 s (under the junk limit) is
    still closed with 421 4.7.0 about 0.5 s after its last real progress."""
    override = {"smtp": {"idle_timeout_seconds": 0.5, "max_junk_commands": 1000}}
    async with running_smtp(make_config(override)) as gw:
        raw = await Raw.connect(gw.port)
        started = time.monotonic()
        await raw.command("EHLO client.example")
        line = ""
        for _ in range(50):  # 5 s at most
            [line] = await raw.command("NOOP")
            if not line.startswith("250 "):
                break
            await asyncio.sleep(0.1)  # the client's keep-alive pace
        elapsed = time.monotonic() - started
        assert line.startswith("421 4.7.0 "), line
        assert 0.4 <= elapsed < 3, elapsed
        assert await raw.closed()
        await raw.close()


async def test_reconnecting_with_bogus_commands_is_not_a_line_per_command(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    """30 sessions of 5 unknown commands each (aiosmtpd closes them with 502): no plain-text
    library warning per command, one JSON line per kind instead, counts at stop."""
    with structlog.testing.capture_logs() as logs:
        async with running_smtp(make_config()) as gw:
            for _ in range(30):
                raw = await Raw.connect(gw.port)
                for _ in range(5):
                    [line] = await raw.command("BOGUS")
                assert line.startswith("502 5.5.1 "), line
                assert await raw.closed()
                await raw.close()
    assert not [r for r in caplog.records if r.name == "mail.log" and r.levelno >= 30]
    first = [e for e in logs if e["event"] == "smtp.client_warning"]
    assert sorted(e["kind"] for e in first) == ["too_many_bogus_commands", "unrecognised_command"]
    [summary] = [e for e in logs if e["event"] == "smtp.client_warnings"]
    assert summary["count"] == 30 * (5 + 1) - 2  # 5 unrecognised and 1 "too many" each


async def test_healthz_answers_while_smtp_is_at_its_cap(gateway: Callable[..., Any]) -> None:
    """SMTP full (10 sessions held, more refused with 421): /healthz still answers 200."""
    overrides = {"smtp": {"max_connections": 10, "max_connections_per_ip": 10}}
    async with gateway(overrides) as gw:
        held = [await Raw.connect(gw.smtp.port) for _ in range(10)]
        for _ in range(20):
            await refused(gw.smtp.port)
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{gw.http.port}/healthz") as response,
        ):
            assert response.status == 200
        for raw in held:
            await raw.close()


# -- HTTP ----------------------------------------------------------------------------------------


async def _http_reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 5)


async def test_http_connections_past_the_cap_get_503_and_idle_ones_are_closed() -> None:
    """max_connections = 3: a 4th connection gets 503 at once; a client that never finishes its
    request head is closed after the idle timeout, which frees its slot."""
    server = HttpServer(create_app(), Address("127.0.0.1", 0), max_connections=3, idle_timeout=0.5)
    await server.start()
    assert server.port is not None
    try:
        with structlog.testing.capture_logs() as logs:
            slow = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
                slow.append((reader, writer))
            started = time.monotonic()
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                with suppress(ConnectionResetError):
                    assert (await _http_reply(reader)).startswith(b"HTTP/1.1 503 ")
                writer.close()
            for reader, writer in slow:
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            assert time.monotonic() - started < 3
        assert len([e for e in logs if e["event"].startswith("http.connection")]) == 1

        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{server.port}/healthz") as response,
        ):
            assert response.status == 200
    finally:
        await server.stop()


async def test_a_reload_raises_the_http_cap_for_the_next_connections() -> None:
    """reconfigure (SIGHUP): past a cap of 1 a second connection gets 503; after raising it to
    2, a new second connection is served."""
    server = HttpServer(create_app(), Address("127.0.0.1", 0), max_connections=1)
    await server.start()
    assert server.port is not None
    try:
        held = await asyncio.open_connection("127.0.0.1", server.port)
        held[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # holds the one slot
        await asyncio.sleep(0.1)

        async def second() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                with suppress(ConnectionResetError):
                    return await _http_reply(reader)
                return b"reset"
            finally:
                writer.close()

        refused = await second()
        assert refused == b"reset" or refused.startswith(b"HTTP/1.1 503 "), refused
        server.reconfigure(2, 64)
        assert (await second()).startswith(b"HTTP/1.1 200 ")
        held[1].close()
    finally:
        await server.stop()


async def _kept_alive(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from `source` that was served one /healthz and is kept alive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return reader, writer


async def _healthz_from(port: int, source: str) -> int:
    """The status of GET /healthz by aiohttp's client from address `source`."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as client,
        client.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status


async def _refused_at_once(port: int, source: str) -> bool:
    """A new connection from `source` that sends nothing is told 503 at once (a served one
    would be told nothing: the read times out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        return (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 503 ")
    finally:
        writer.close()


async def test_one_address_gets_at_most_its_share_of_the_http_connections() -> None:
    """max_connections 4, max_connections_per_ip 2: with two connections open from 127.0.0.1
    a third from it gets 503 while 127.0.0.2 is served; closing one of the two, or a reload
    raising the share, lets 127.0.0.1 in again."""
    server = HttpServer(
        create_app(),
        Address("127.0.0.1", 0),
        max_connections=4,
        max_connections_per_ip=2,
        idle_timeout=30,
    )
    await server.start()
    port = server.port
    assert port is not None
    held = []
    try:
        with structlog.testing.capture_logs() as logs:
            held = [await _kept_alive(port, "127.0.0.1") for _ in range(2)]
            assert await _refused_at_once(port, "127.0.0.1")
            assert await _healthz_from(port, "127.0.0.2") == 200
            assert await _refused_at_once(port, "127.0.0.1")
        refusals = [e for e in logs if e["event"] == "http.connection_refused"]
        assert len(refusals) == 1 and refusals[0]["client"] == "127.0.0.1", refusals

        _reader, writer = held.pop()
        writer.close()

        async def served_again() -> bool:
            # Until the server has seen the close, the new connection is still refused.
            try:
                return await _healthz_from(port, "127.0.0.1") == 200
            except aiohttp.ClientError:
                return False

        await until(served_again, 10)
        # Two open again from 127.0.0.1; a reload raising its share lets a third in.
        held.append(await _kept_alive(port, "127.0.0.1"))
        assert await _refused_at_once(port, "127.0.0.1")
        server.reconfigure(4, 3)
        assert await _healthz_from(port, "127.0.0.1") == 200
    finally:
        for _reader, writer in held:
            writer.close()
        await server.stop()


def test_the_http_share_must_be_a_positive_number(make_config: Callable[..., Config]) -> None:
    """[http] max_connections_per_ip defaults to 64 and refuses 0, negatives and non-numbers,
    naming the key."""
    assert make_config().http.max_connections_per_ip == 64
    for bad in (0, -3, "all"):
        with pytest.raises(ConfigError) as caught:
            make_config({"http": {"max_connections_per_ip": bad}})
        assert "http.max_connections_per_ip" in str(caught.value), bad


async def test_http_keepalive_connection_is_closed_after_the_idle_timeout() -> None:
    """A kept-alive connection that sends nothing more is closed after idle_timeout."""
    server = HttpServer(create_app(), Address("127.0.0.1", 0), idle_timeout=0.5)
    await server.start()
    assert server.port is not None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _http_reply(reader)).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
        assert time.monotonic() - started < 3
        writer.close()
    finally:
        await server.stop()


# -- the event loop's own errors -----------------------------------------------------------------


def test_accept_errors_are_counted_not_logged_with_tracebacks() -> None:
    """1000 'out of file descriptors' errors from asyncio's accept loop are one line at once and
    one summary, without tracebacks; another error keeps its traceback, once."""
    loop = asyncio.new_event_loop()
    errors = LoopErrors()
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(1000):
                errors(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    },
                )
            errors(
                loop, {"message": "Task exception was never retrieved", "exception": KeyError(1)}
            )
            errors.flush()
    finally:
        loop.close()
    assert len(logs) <= 4, logs
    [first] = [e for e in logs if e["event"] == "loop.error" and e["kind"] == "EMFILE"]
    assert "exc_info" not in first
    [summary] = [e for e in logs if e["event"] == "loop.errors"]
    assert summary["counts"]["EMFILE"] == 999
    [other] = [e for e in logs if e["event"] == "loop.error" and e["kind"] == "KeyError"]
    assert other["exc_info"]


@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(make_config: Callable[..., Config], value: int) -> None:
    """Connection caps and the junk limit below 1 are configuration errors."""
    from gateway.config import ConfigError

    for key in ("max_connections", "max_connections_per_ip", "max_junk_commands"):
        with pytest.raises(ConfigError, match=f"smtp.{key}"):
            make_config({"smtp": {key: value}})


# -- file descriptors, in a real daemon ----------------------------------------------------------

# The daemon tests' fixtures: a configuration wired to the sandbox and relay, and cleanup.
daemon_config = test_daemon.daemon_config
processes = test_daemon.processes


class LimitedGateway(GatewayProcess):
    """`fax-gateway serve` with RLIMIT_NOFILE set to `nofile` (soft and hard) before it starts."""

    def __init__(self, config_path: Path, nofile: int) -> None:
        self.config_path = config_path
        self.lines = []
        self._cond = threading.Condition()
        start = (
            "import resource, runpy, sys\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n"
            f"sys.argv = ['fax-gateway', 'serve', '--config', {str(config_path)!r}]\n"
            "runpy.run_module('gateway', run_name='__main__')\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", start],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(),
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@pytest.mark.slow
def test_a_daemon_with_256_descriptors_survives_300_idle_connections(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]], processes: list[GatewayProcess]
) -> None:
    """RLIMIT_NOFILE 256 and max_connections 1000: SMTP is capped below the descriptors (the
    rest get 421 4.7.0), /healthz answers throughout, and the log stays a handful of JSON lines
    (the probe saw 100,000 tracebacks)."""
    path, _ = daemon_config({"smtp": {"max_connections": 1000, "max_connections_per_ip": 1000}})
    process = LimitedGateway(path, 256)
    processes.append(process)
    ready = process.wait_for("daemon.ready")
    lowered = process.wait_for("smtp.max_connections_lowered")
    assert lowered["configured"] == 1000 and lowered["used"] < 256
    smtp_port, http_port = ready["smtp_port"], ready["http_port"]

    held: list[socket.socket] = []
    greetings: list[bytes] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", smtp_port), timeout=10)
            held.append(sock)
            greetings.append(sock.recv(200))
        admitted = [g for g in greetings if g.startswith(b"220 ")]
        refusals = [g for g in greetings if g.startswith(b"421 4.7.0 ")]
        assert len(admitted) == lowered["used"]
        assert len(admitted) + len(refusals) == 300, set(greetings)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        for sock in held:
            sock.close()
    assert process.terminate() == 0
    assert not [line for line in process.lines if line.get("event") == "raw"], process.lines[-5:]
    assert len([e for e in process.lines if "refused" in e.get("event", "")]) <= 2
