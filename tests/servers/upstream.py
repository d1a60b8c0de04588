"""The `upstream_proxy` fixture: one URL in front of several gateway nodes, as nginx's upstream.

docs/cluster.md puts the carrier's webhook URL behind nginx with every node as an upstream and
`proxy_next_upstream error timeout http_500 http_502 http_503`. This is that, small and real: a
threaded HTTP server on a free loopback port that hands each request to the next upstream in
turn (round robin) and, when that upstream refuses the connection, times out or answers 500,
502 or 503, offers the same request to the next one; the client gets the first other answer,
or 502 once every upstream failed. A node killed mid-test is thereby passed over, and a webhook
a node could not store reaches another.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

# Answers that send the request on to the next upstream (nginx: proxy_next_upstream).
_NEXT_UPSTREAM = frozenset({500, 502, 503})
# Request headers that belong to one hop, not to the request.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "host"})


@dataclass
class UpstreamProxy:
    """A running round-robin proxy: where it listens, and what each upstream answered."""

    timeout: float = 5.0
    upstreams: list[str] = field(default_factory=list)  # base URLs, http://host:port
    # (upstream, status or None for a connection error), one per try, oldest first.
    tries: list[tuple[str, int | None]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> UpstreamProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy._forward(self)

            def do_GET(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tries are recorded instead."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="upstream-proxy", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answered_by(self) -> dict[str, int]:
        """Requests each upstream answered with a status that ended the request there."""
        counts = {upstream: 0 for upstream in self.upstreams}
        for upstream, status in list(self.tries):
            if status is not None and status not in _NEXT_UPSTREAM:
                counts[upstream] += 1
        return counts

    def _order(self) -> list[str]:
        with self._lock:
            start = next(self._turn) % len(self.upstreams)
        return self.upstreams[start:] + self.upstreams[:start]

    def _forward(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _HOP_HEADERS
        }
        status, reply, content_type = 502, b"no upstream answered", "text/plain"
        for upstream in self._order():
            answer = self._try(upstream, request.command, request.path, body, headers)
            with self._lock:
                self.tries.append((upstream, None if answer is None else answer[0]))
            if answer is None:
                continue
            status, reply, content_type = answer
            if status not in _NEXT_UPSTREAM:
                break
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(reply)))
        request.end_headers()
        request.wfile.write(reply)

    def _try(
        self, upstream: str, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str] | None:
        """The upstream's answer, or None if it could not be had (refused, reset, timed out)."""
        parts = urllib.parse.urlsplit(upstream)
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return (
                response.status,
                response.read(),
                response.getheader("Content-Type") or "text/plain",
            )
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()


@pytest.fixture
def upstream_proxy() -> Iterator[Callable[[list[str]], UpstreamProxy]]:
    """start(upstreams): a round-robin proxy in front of `upstreams`, stopped after the test."""
    started: list[UpstreamProxy] = []

    def start(upstreams: list[str]) -> UpstreamProxy:
        proxy = UpstreamProxy(upstreams=list(upstreams)).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
