"""systemd's notify protocol, received on a real AF_UNIX datagram socket from `serve`."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.ops import sdnotify
from tests.conftest import ROOT, cli_env, free_port, merge

STARTUP_SECONDS = 30


class NotifyListener:
    """The systemd side of the protocol: a datagram socket collecting every message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def expect(self, line: str, timeout: float = STARTUP_SECONDS) -> str:
        """Wait for a message with `line` among its lines; return that message."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} within {timeout} s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if line in message.split("\n"):
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="faxgw-sd-") as name:
        yield Path(name)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[NotifyListener]:
    path = short_dir / "notify.sock"
    listener = NotifyListener(str(path))
    yield listener
    listener.close()


@contextmanager
def gateway(
    tmp_path: Path,
    write_config: Callable[..., Path],
    config_data: dict[str, Any],
    **env: str,
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Run `fax-gateway serve` with extra environment; yield it, its HTTP port and its log."""
    http_port = free_port()
    data = merge(
        config_data,
        {
            "smtp": {"listen": f"127.0.0.1:{free_port()}"},
            "http": {"listen": f"127.0.0.1:{http_port}"},
        },
    )
    base = {
        k: v
        for k, v in cli_env().items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    log_path = tmp_path / "gateway.log"
    with (
        log_path.open("wb") as log_file,
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(write_config(data))],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**base, **env},
            cwd=ROOT,
        ) as proc,
    ):
        try:
            yield proc, http_port, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def healthz(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def test_ready_after_listening_and_stopping_on_sigterm(
    tmp_path: Path,
    write_config: Callable[..., Path],
    config_data: dict[str, Any],
    listener: NotifyListener,
    short_dir: Path,
) -> None:
    """READY=1 comes once HTTP answers; SIGTERM brings STOPPING=1 and exit status 0."""
    socket_path = str(short_dir / "notify.sock")
    with gateway(tmp_path, write_config, config_data, NOTIFY_SOCKET=socket_path) as (
        proc,
        port,
        log_path,
    ):
        ready = listener.expect("READY=1")
        # The port must already be open: connecting right after READY=1 may not fail.
        assert healthz(port) == 200, log_path.read_text()
        assert any(line.startswith("STATUS=") for line in ready.split("\n"))
        proc.send_signal(signal.SIGTERM)
        listener.expect("STOPPING=1", timeout=10)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    assert not any("WATCHDOG=1" in m for m in listener.messages), "watchdog without WatchdogSec"


def test_watchdog_pings_repeatedly(
    tmp_path: Path,
    write_config: Callable[..., Path],
    config_data: dict[str, Any],
    listener: NotifyListener,
    short_dir: Path,
) -> None:
    """With WATCHDOG_USEC set, WATCHDOG=1 arrives again and again, and stops after STOPPING=1."""
    socket_path = str(short_dir / "notify.sock")
    # 0.2 s WatchdogSec: a ping every 0.1 s, so a few arrive quickly.
    with gateway(
        tmp_path, write_config, config_data, NOTIFY_SOCKET=socket_path, WATCHDOG_USEC="200000"
    ) as (proc, _port, log_path):
        listener.expect("READY=1")
        for _ in range(3):
            listener.expect("WATCHDOG=1", timeout=10)
        proc.send_signal(signal.SIGTERM)
        listener.expect("STOPPING=1", timeout=10)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        # Whatever arrived after STOPPING=1 is still queued on our socket.
        listener.sock.setblocking(False)
        after: list[str] = []
        while True:
            try:
                after.append(listener.sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert not any("WATCHDOG=1" in m for m in after), after


def test_abstract_socket(
    tmp_path: Path, write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """NOTIFY_SOCKET=@name reaches a socket in the abstract namespace."""
    name = f"faxgw-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener("\0" + name)
    try:
        with gateway(tmp_path, write_config, config_data, NOTIFY_SOCKET="@" + name) as (
            proc,
            port,
            log_path,
        ):
            listener.expect("READY=1")
            assert healthz(port) == 200
            proc.send_signal(signal.SIGTERM)
            listener.expect("STOPPING=1", timeout=10)
            assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        listener.close()


def test_notify_sends_one_datagram(listener: NotifyListener, short_dir: Path) -> None:
    """notify() delivers the message as one datagram, byte for byte, and returns True."""
    env = {"NOTIFY_SOCKET": str(short_dir / "notify.sock")}
    assert sdnotify.notify("READY=1\nSTATUS=accepting mail", env) is True
    assert listener.expect("READY=1", timeout=5) == "READY=1\nSTATUS=accepting mail"


def test_reloading_carries_monotonic_time(listener: NotifyListener, short_dir: Path) -> None:
    """reloading() sends RELOADING=1 with MONOTONIC_USEC from CLOCK_MONOTONIC, as v253+ needs."""
    env = {"NOTIFY_SOCKET": str(short_dir / "notify.sock")}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(env) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = listener.expect("RELOADING=1", timeout=5).split("\n")
    usec = int(next(line for line in lines if line.startswith("MONOTONIC_USEC="))[15:])
    assert before <= usec <= after


@pytest.mark.parametrize(
    "env",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative.sock"}, {"NOTIFY_SOCKET": "vsock:2:9"}],
)
def test_notify_without_systemd(env: dict[str, str]) -> None:
    """Without a usable NOTIFY_SOCKET, notify() sends nothing and returns False."""
    assert sdnotify.notify("READY=1", env) is False


def test_notify_to_vanished_socket(short_dir: Path) -> None:
    """A socket that is gone is logged and reported as False, never raised into the daemon."""
    env = {"NOTIFY_SOCKET": str(short_dir / "gone.sock")}
    assert sdnotify.notify("WATCHDOG=1", env) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """Half of WatchdogSec, and only for the process systemd named in WATCHDOG_PID."""
    assert sdnotify.watchdog_interval(env) == expected
