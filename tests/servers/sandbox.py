"""The `sandbox` fixture: the real sandbox carrier on a free port, in a thread of its own.

The sandbox runs on its own event loop in a background thread, so the same fixture serves sync
tests, async tests (whose loop stays free to answer the sandbox's webhooks) and tests that run
the gateway as a subprocess. Tests steer and observe it through its control API over HTTP.

Its API key is the one in tests.conftest.BASE_CONFIG, so a gateway configuration needs only
`merge(config_data, sandbox.config_override())`. Timing is fast: no delay between fax steps and
webhook retries a few tens of milliseconds apart.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from PIL import Image
from pypdf import PdfWriter

from gateway.sandbox import SandboxServer, SandboxSettings
from tests.conftest import BASE_CONFIG

T = TypeVar("T")

API_KEY: str = BASE_CONFIG["voxtelesys"]["api_key"]

FAST_SETTINGS = SandboxSettings(
    api_key=API_KEY,
    delay=0.0,
    webhook_min_delay=0.05,
    webhook_max_delay=0.2,
    webhook_timeout=5.0,
    download_timeout=5.0,
)

# Longest single long-poll while waiting: conditions that depend on things outside the sandbox
# (a gateway's database, say) are re-checked at least this often.
_MAX_WAIT_STEP = 0.2

# Control calls go straight to 127.0.0.1, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SandboxError(AssertionError):
    """The control API refused a call (a mistake in the test)."""


class Sandbox:
    """A running sandbox carrier and the means to steer and observe it."""

    def __init__(self, settings: SandboxSettings = FAST_SETTINGS) -> None:
        self.settings = settings
        self.api_key = settings.api_key
        self._server: SandboxServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-carrier", daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Sandbox:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the sandbox did not start within 10 s")
        if self._failure is not None:
            raise RuntimeError("the sandbox failed to start") from self._failure
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = SandboxServer(self.settings)
            loop.run_until_complete(self._server.start())
        except BaseException as exc:
            self._failure = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._server.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            if self._thread.is_alive():
                raise RuntimeError("the sandbox did not stop within 15 s")

    # -- addresses ---------------------------------------------------------------------------

    @property
    def server(self) -> SandboxServer:
        assert self._server is not None
        return self._server

    @property
    def root_url(self) -> str:
        return self.server.root_url

    @property
    def base_url(self) -> str:
        """The API base, …/api/v1: the gateway's voxtelesys.base_url."""
        return self.server.base_url

    @property
    def control_url(self) -> str:
        return self.server.control_url

    def config_override(self) -> dict[str, Any]:
        """Merge into a gateway configuration to make it use this sandbox."""
        return {"voxtelesys": {"base_url": self.base_url, "api_key": self.api_key}}

    # -- steering ----------------------------------------------------------------------------

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings at run time: delay, page_size, webhook_url, outcomes, ..."""
        return self._object("PATCH", "/settings", settings)

    def set_webhook(self, url: str | None, method: str = "POST") -> dict[str, Any]:
        return self.configure(webhook_url=url, webhook_method=method)

    def inject(self, kind: str, count: int = 1, **options: Any) -> dict[str, Any]:
        """Add a fault; see gateway/sandbox/control.py for kinds and options."""
        return self._object("POST", "/faults", {"kind": kind, "count": count, **options})

    def fail_next(self, count: int = 1, status: int = 500, **options: Any) -> dict[str, Any]:
        """The next `count` API requests (matching `method`/`path`) answer `status`."""
        return self.inject("error", count, status=status, **options)

    def slow(self, seconds: float, count: int = 1, **options: Any) -> dict[str, Any]:
        return self.inject("slow", count, seconds=seconds, **options)

    def disconnect_next(self, count: int = 1, **options: Any) -> dict[str, Any]:
        return self.inject("disconnect", count, **options)

    def drop_webhooks(self, count: int = 1) -> dict[str, Any]:
        return self.inject("drop_webhooks", count)

    def fail_faxes(self, count: int, error_code: int, to: str | None = None) -> dict[str, Any]:
        """The next `count` outbound faxes (to `to`, E.164, if given) fail with `error_code`."""
        return self.inject("fail_fax", count, error_code=error_code, to=to)

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def inbound(self, to: str, from_: str, data: bytes) -> dict[str, Any]:
        """An inbound fax of document `data` arrives for `to`; returns the sandbox's record."""
        query = urllib.parse.urlencode({"to": to, "from": from_})
        return self._object("POST", f"/inbound?{query}", raw=data)

    def finish(self, fax_id: str, error_code: int | None = None) -> dict[str, Any]:
        """End a fax now: delivered, or failed with `error_code`; its webhook goes out."""
        return self._object("POST", f"/faxes/{fax_id}/finish", {"error_code": error_code})

    def resend_webhook(self, fax_id: str) -> dict[str, Any]:
        return self._object("POST", f"/faxes/{fax_id}/webhook")

    def reset(self) -> None:
        self._call("POST", "/reset")

    # -- observing ---------------------------------------------------------------------------

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """API and media requests the sandbox answered, oldest first, optionally filtered by
        path (relative to the API base, e.g. "/faxes", or absolute) and method."""
        entries = self._list("/requests")
        if path is not None:
            full = path if path.startswith(("/api/", "/_sandbox/")) else "/api/v1" + path
            entries = [e for e in entries if e["path"] == full]
        if method is not None:
            entries = [e for e in entries if e["method"] == method.upper()]
        return entries

    def webhooks(self, fax_id: str | None = None) -> list[dict[str, Any]]:
        """Every webhook attempt, oldest first, with `response_status` / `error` / `dropped`."""
        entries = self._list("/webhooks")
        return [e for e in entries if fax_id is None or e["fax_id"] == fax_id]

    def faxes(self) -> list[dict[str, Any]]:
        """All faxes, newest first, with history, document and download details."""
        return self._list("/faxes")

    def fax(self, fax_id: str) -> dict[str, Any]:
        return self._object("GET", f"/faxes/{fax_id}")

    def busy(self) -> int:
        """Fax walks and webhook deliveries still running (0 = idle, nothing more will come)."""
        return int(self._call("GET", "")["busy"])

    def document(self, fax_id: str) -> bytes:
        with _OPENER.open(f"{self.control_url}/faxes/{fax_id}/document", timeout=10) as resp:
            data: bytes = resp.read()
            return data

    # -- waiting -----------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition"
    ) -> T:
        """Return predicate()'s first truthy value; wake on every sandbox change, no sleeps."""
        deadline = time.monotonic() + timeout
        while True:
            version = self._version()
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self._changes(version, min(remaining, _MAX_WAIT_STEP))

    async def wait_for_async(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,  # noqa: ASYNC109 (same signature as wait_for)
        what: str = "condition",
    ) -> T:
        """wait_for for async tests: the long poll runs in a thread, so the test's own loop
        (and any server on it that the sandbox calls) keeps running."""
        deadline = time.monotonic() + timeout
        while True:
            version = await asyncio.to_thread(self._version)
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.to_thread(self._changes, version, min(remaining, _MAX_WAIT_STEP))

    def _version(self) -> int:
        return int(self._call("GET", "")["version"])

    def _changes(self, version: int, seconds: float) -> None:
        self._call("GET", f"/changes?since={version}&timeout={seconds:.3f}")

    # -- plumbing ----------------------------------------------------------------------------

    def _object(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        result = self._call(method, path, body, **kw)
        assert isinstance(result, dict), result
        return result

    def _list(self, path: str) -> list[dict[str, Any]]:
        result = self._call("GET", path)
        assert isinstance(result, list), result
        return result

    def _call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.control_url + path, data=data, method=method)
        if raw is None and body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=40) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            exc.close()
            raise SandboxError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(payload) if payload else None


class DocumentServer:
    """A plain HTTP file server in a thread: the place fax documents are fetched from.

    `add(name, data)` publishes bytes at `url(name)`; `status` makes that path answer an error
    instead. Every GET is recorded in `hits`.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes, str]] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits.append(self.path)
                status, data, content_type = owner.files.get(
                    self.path, (404, b"not found", "text/plain")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> DocumentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name.lstrip('/')}"

    def add(
        self,
        name: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        status: int = 200,
    ) -> str:
        self.files["/" + name.lstrip("/")] = (status, data, content_type)
        return self.url(name)


def make_pdf(pages: int = 1) -> bytes:
    """A valid PDF of blank Letter pages."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_image(kind: str = "PNG", pages: int = 1) -> bytes:
    """A small black-and-white image; TIFF may have several pages (frames)."""
    frames = [Image.new("1", (200, 100), color=1) for _ in range(pages)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=kind, save_all=pages > 1, append_images=frames[1:])
    for frame in frames:
        frame.close()
    return buffer.getvalue()


@pytest.fixture
def document_server() -> Iterator[DocumentServer]:
    """An HTTP server publishing test documents for the sandbox to fetch."""
    server = DocumentServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox carrier on a free port, stopped at teardown."""
    running = Sandbox().start()
    try:
        yield running
    finally:
        running.stop()
