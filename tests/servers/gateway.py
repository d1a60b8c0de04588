"""The `gateway` fixture: a whole gateway (daemon.Gateway) on the test's own event loop.

Wired to the sandbox carrier and the capturing relay, with local storage served by its own
HTTP server on a free port; `overrides` change any configuration key (S3 storage, say).
Retry delays are short so deferred work comes due within a test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import config_from_dict
from gateway.daemon import Gateway
from tests.conftest import free_port, merge

if TYPE_CHECKING:  # imported for types only: the plugin modules load in their own order
    from tests.servers.relay import CapturingRelay
    from tests.servers.sandbox import Sandbox

GatewayFactory = Callable[..., Any]

FAST_QUEUE = {
    "min_backoff_seconds": 0.05,
    "max_backoff_seconds": 0.2,
    "scan_interval_seconds": 0.1,
    "shutdown_timeout_seconds": 5,
}


def gateway_config_data(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay: CapturingRelay,
    http_port: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data = merge(
        config_data,
        {
            "smtp": {"listen": "127.0.0.1:0"},
            "http": {
                "listen": f"127.0.0.1:{http_port}",
                "public_url": f"http://127.0.0.1:{http_port}",
            },
            "relay": relay.relay_config_overrides(),
            "queue": FAST_QUEUE,
            "inbound": {"default_recipients": ["office@example.com"]},
        },
    )
    data = merge(data, sandbox.config_override())
    return merge(data, overrides or {})


def serve_config_data(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay: CapturingRelay,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration of a `fax-gateway serve` process (tests/test_daemon.py
    GatewayProcess): SMTP and HTTP on free ports chosen now (a process cannot report the
    ports it bound), the sandbox carrier, the capturing relay, short retry delays; then
    `overrides`."""
    http_port = free_port()
    data = merge(
        config_data,
        {
            "smtp": {"listen": f"127.0.0.1:{free_port()}"},
            "http": {
                "listen": f"127.0.0.1:{http_port}",
                "public_url": f"http://127.0.0.1:{http_port}",
            },
            "relay": relay.relay_config_overrides(),
            "queue": FAST_QUEUE,
        },
    )
    data = merge(data, sandbox.config_override())
    return merge(data, overrides or {})


@pytest.fixture
def gateway(
    config_data: dict[str, Any], sandbox: Sandbox, relay_server: CapturingRelay, tmp_path: Path
) -> GatewayFactory:
    """`async with gateway(overrides) as gw:` a started Gateway whose webhooks the sandbox calls."""

    @asynccontextmanager
    async def run(overrides: dict[str, Any] | None = None) -> AsyncIterator[Gateway]:
        port = free_port()
        data = gateway_config_data(config_data, sandbox, relay_server, port, overrides)
        config = config_from_dict(data, env={})
        token = config.http.webhook_token.get_secret_value()
        sandbox.set_webhook(f"{config.http.public_url}/webhooks/fax/{token}")
        gw = Gateway(config)
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop()

    return run
