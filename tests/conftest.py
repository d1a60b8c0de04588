"""Shared fixtures: configuration files, free ports, and helpers to run the CLI."""

from __future__ import annotations

import copy
import gc
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.config import Config, config_from_dict
from tests.cli_zygote import Zygote

ROOT = Path(__file__).resolve().parent.parent

# Helper modules hold asserts moved out of test modules: keep pytest's detailed messages.
pytest.register_assert_rewrite("tests.harness", "tests.helpers")

# Fixture modules of the real test servers: every tests/servers/*.py is a plugin.
pytest_plugins = sorted(
    f"tests.servers.{path.stem}"
    for path in (Path(__file__).parent / "servers").glob("*.py")
    if path.stem != "__init__"
)

BASE_CONFIG: dict[str, Any] = {
    "smtp": {"listen": "127.0.0.1:0", "domain": "fax.local"},
    "http": {
        "listen": "127.0.0.1:0",
        "public_url": "http://127.0.0.1:8025",
        "webhook_token": "test-webhook-token-0123456789",
    },
    "voxtelesys": {"api_key": "test-api-key-abcdef", "from_number": "+12015550100"},
    "relay": {"from_address": "fax-gateway@example.com"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture
def config_data(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A minimal valid configuration as a dict, with data.dir under tmp_path (and, in a test
    run once per store backend, that backend's store: tests/servers/postgres.py)."""
    data = merge(BASE_CONFIG, {"data": {"dir": str(tmp_path / "data")}})
    if "store_backend" in request.fixturenames:
        data = merge(data, request.getfixturevalue("store_backend").config_override())
    return data


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(data: dict[str, Any], name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.write_bytes(tomli_w.dumps(data).encode())
        return path

    return write


@pytest.fixture
def make_config(config_data: dict[str, Any]) -> Callable[..., Config]:
    def make(override: dict[str, Any] | None = None) -> Config:
        return config_from_dict(merge(config_data, override or {}), env={})

    return make


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAXGW_", "VOXTELESYS_"))}
    env.update(extra)
    return env


_ZYGOTE = Zygote()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` in a process of its own, forked from one that has the
    gateway imported already (tests/cli_zygote.py): as subprocess.run would, a second faster.
    tests/test_cli.py runs the real `python -m gateway` too."""
    return _ZYGOTE.run(list(args), env=env or cli_env(), cwd=ROOT, timeout=timeout, input=input)


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` as a fresh interpreter (subprocess.run)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        cwd=ROOT,
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported and built lives as long as the session: out of the garbage
    collector's sight (gc.freeze), so that every later collection, the module ends' below and
    the interpreter's own, looks only at what the tests made."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="module", autouse=True)
def _leaks_charged_to_their_module() -> Iterator[None]:
    """A socket, transport or file the module's tests left to the garbage collector warns at
    the module's end (an error in its last test's teardown: filterwarnings = error), not in
    whichever later test the collector happens to run in. One collection per module of what
    the tests made (pytest_collection_finish): a few ms each."""
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _cli_zygote() -> Iterator[None]:
    """Stops run_cli's zygote (if a test started it) at the end of the session."""
    yield
    _ZYGOTE.close()


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Gateway processes a test starts (tests/test_daemon.py GatewayProcess): any still
    running at the end is killed by its pid, and each is closed."""
    processes: list[Any] = []
    yield processes
    for process in processes:
        if process.proc.poll() is None:
            process.kill()
        process.close()
