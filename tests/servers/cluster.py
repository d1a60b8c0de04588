"""Gateway nodes sharing one PostgreSQL store and one S3 bucket, for the cluster tests
(tests/test_cluster.py, tests/test_cluster_files.py).

`cluster_node(name, settings)` writes the configuration of one node: its own data.dir, SMTP
and HTTP ports; the test's PostgreSQL schema and bucket, the sandbox carrier and the capturing
relay, shared; short leases and timeouts, so that what a killed node held comes free within
a test; then `settings`, the test's own. `Node.start(started)` runs it as a real
`fax-gateway serve` process. The helpers send the tests' mail (tests/samples.py
`traffic_mail`) and read the store.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.conftest import cli_env, merge

if TYPE_CHECKING:  # imported for types only: the plugin modules load in their own order
    from tests.servers.postgres import PostgresServer
    from tests.servers.relay import CapturingRelay
    from tests.servers.sandbox import Sandbox
    from tests.servers.seaweed import S3Server
    from tests.test_daemon import GatewayProcess

SENDER = "alice@example.com"
# A dead node's claims come free after this (the default 60 s would only make a test slow).
LEASE_SECONDS = 3


def fax_number(index: int, first: int) -> str:
    """The test's `index`th fax number, from +1201555<first>."""
    return f"+1201555{first + index:04d}"


def send(port: int, number: str, data: bytes) -> tuple[int, bytes]:
    """One SMTP transaction to `number`: the RCPT reply if it was refused, else DATA's. Raises
    what smtplib raises when the node is gone."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(SENDER)
        code, reply = client.rcpt(f"{number.lstrip('+')}@fax.local")
        if code != 250:
            return code, reply
        return client.data(data)


def job_of(reply: bytes) -> str:
    """The job id a "250 2.0.0 queued as <id>" names."""
    return reply.decode().rsplit(" ", 1)[1]


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def wait_until(
    what: str,
    condition: Callable[[], bool],
    seconds: float,
    describe: Callable[[], Any],
    *,
    alive: GatewayProcess | None = None,
    pause: float = 0.3,
) -> None:
    """Poll `condition` every `pause` s for at most `seconds` (then fail with `describe()`);
    with `alive`, fail as soon as that process has exited."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {seconds:.0f} s: {describe()}"
        if alive is not None:
            assert alive.proc.poll() is None, alive.lines[-20:]
        time.sleep(pause)


@dataclass
class Node:
    """One node's configuration file and the settings written into it."""

    path: Path
    data: dict[str, Any]

    @property
    def smtp_port(self) -> int:
        return int(self.data["smtp"]["listen"].rsplit(":", 1)[1])

    @property
    def webhook_url(self) -> str:
        return (
            f"{self.data['http']['public_url']}/webhooks/fax/{self.data['http']['webhook_token']}"
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.data["data"]["dir"])

    def start(self, started: list[Any]) -> GatewayProcess:
        """`fax-gateway serve` on this node, ready (killed at the end by `started`)."""
        from tests.test_daemon import GatewayProcess

        process = GatewayProcess(self.path, env=cli_env())
        started.append(process)
        process.wait_for("daemon.ready", timeout=60)
        return process


@pytest.fixture
def cluster_node(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    s3_env: S3Server,
    postgres_server: PostgresServer,
    postgres_schema: str,
    write_config: Callable[..., Path],
) -> Callable[..., Node]:
    """make(name, settings): one node's configuration (see the module docstring)."""

    # Imported here: the plugin modules load in name order, and each must load as a plugin.
    from tests.servers.gateway import serve_config_data

    def make(name: str, settings: dict[str, Any] | None = None) -> Node:
        data = serve_config_data(
            config_data,
            sandbox,
            relay_server,
            {
                "data": {"dir": f"{config_data['data']['dir']}-{name}"},
                "webhooks": {"reconcile_after_seconds": 2, "reconcile_interval_seconds": 1},
                "store": {
                    "backend": "postgresql",
                    "dsn": postgres_server.dsn(postgres_schema),
                    "lease_seconds": LEASE_SECONDS,
                },
            },
        )
        data = merge(data, s3_env.config_overrides())
        # A fax a dead node was submitting is another's after its submit lease, 10 carrier
        # timeouts (so that a POST still in flight is never made twice): 20 s here, not 300.
        data = merge(data, {"voxtelesys": {"timeout_seconds": 2}})
        data = merge(data, settings or {})
        return Node(write_config(data, f"{name}.toml"), data)

    return make
