"""The sandbox carrier behaves like the documented API: auth, errors, paging, document checks,
the fax's walk to a final status, webhooks (POST and GET, retried), inbound faxes, faults,
and its command line."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.carrier import CarrierFax
from gateway.sandbox.webhooks import query_items
from tests.conftest import ROOT, cli_env, free_port, run_cli
from tests.servers.sandbox import DocumentServer, Sandbox, make_image, make_pdf

TO = "+12015550123"
FROM = "+12015550100"


class Receiver:
    """A webhook endpoint on the test's loop that answers with scripted statuses."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append(
            {
                "method": request.method,
                "query": list(request.query.items()),
                "content_type": request.content_type,
                "json": json.loads(body) if body else None,
            }
        )
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    app = web.Application()
    app.router.add_route("*", "/hook/{token}", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    target.url = f"http://127.0.0.1:{port}/hook/secret-token"
    try:
        yield target
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(sandbox: Sandbox, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or sandbox.api_key}"}


async def post_fax(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        sandbox.base_url + "/faxes", json=body, headers=auth(sandbox, key)
    ) as response:
        return response.status, await response.json()


async def final(sandbox: Sandbox, fax_id: str) -> dict[str, Any]:
    await sandbox.wait_for_async(
        lambda: sandbox.fax(fax_id)["status"] in ("delivered", "failed", "received"),
        what=f"fax {fax_id} to end",
    )
    return sandbox.fax(fax_id)


# -- the documented API ----------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic abc", "Bearer "])
async def test_auth_required(http: aiohttp.ClientSession, sandbox: Sandbox, header: str) -> None:
    """A missing or wrong bearer key gets 401 with the documented error JSON."""
    headers = {"Authorization": header} if header else {}
    async with http.get(sandbox.base_url + "/faxes", headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert body["status"] == "error" and body["message"] == "unauthorized" and body["error_id"]


async def test_not_found_is_documented_json(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """Unknown fax ids, unknown routes and wrong methods all answer 404 with error JSON."""
    for method, path in [("GET", "/faxes/nope"), ("GET", "/nothing"), ("DELETE", "/faxes")]:
        async with http.request(method, sandbox.base_url + path, headers=auth(sandbox)) as resp:
            assert resp.status == 404, (method, path)
            assert (await resp.json())["status"] == "error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "missing to; missing from; missing url"),
        ({"to": "call me", "from": FROM, "url": "https://x/y.pdf"}, "invalid to"),
        ({"to": TO, "from": 15556668888, "url": "https://x/y.pdf"}, "invalid from"),
        ({"to": TO, "from": FROM, "url": "file:///etc/passwd"}, "invalid url"),
        ({"to": TO, "from": FROM, "url": "https://x/y.pdf", "attempts": 0}, "invalid attempts"),
        ({"to": TO, "from": FROM, "url": "https://x/y.pdf", "attempts": "3"}, "invalid attempts"),
        (["not", "an", "object"], "JSON object"),
    ],
)
async def test_validation_422(
    http: aiohttp.ClientSession, sandbox: Sandbox, body: Any, message: str
) -> None:
    """Invalid POST bodies get 422 with the documented error JSON naming the problem."""
    async with http.post(sandbox.base_url + "/faxes", json=body, headers=auth(sandbox)) as resp:
        assert resp.status == 422
        error = await resp.json()
    assert error["status"] == "error" and message in error["message"]
    assert sandbox.faxes() == []


async def test_numbers_with_or_without_plus(
    http: aiohttp.ClientSession, sandbox: Sandbox, document_server: DocumentServer
) -> None:
    """Both spellings of the documentation are taken; answers show digits, as documented."""
    url = document_server.add("a.pdf", make_pdf())
    status, fax = await post_fax(
        http, sandbox, {"to": "13003003000", "from": "+13003003001", "url": url}
    )
    assert status == 200
    assert (fax["to"], fax["from"], fax["status"], fax["attempts"]) == (
        "13003003000",
        "13003003001",
        "queued",
        3,
    )
    assert "pages" not in fax and "error" not in fax


async def test_pagination_cursor(
    http: aiohttp.ClientSession, sandbox: Sandbox, document_server: DocumentServer
) -> None:
    """Pages of page_size, newest first, chained by an opaque cursor; bad cursors get 422."""
    sandbox.configure(page_size=3)
    url = document_server.add("a.pdf", make_pdf())
    ids = [(await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url}))[1]["id"]]
    for _ in range(6):
        ids.append((await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url}))[1]["id"])
    seen: list[str] = []
    params: dict[str, str] = {}
    pages = 0
    while True:
        async with http.get(
            sandbox.base_url + "/faxes", params=params, headers=auth(sandbox)
        ) as resp:
            page = await resp.json()
        pages += 1
        assert page["page_size"] == 3 and len(page["results"]) <= 3
        seen += [fax["id"] for fax in page["results"]]
        if "next_page" not in page:
            break
        params = {"next_page": page["next_page"]}
    assert pages == 3 and seen == list(reversed(ids))
    for bad in ({"next_page": "not-a-cursor"}, {"page": "0"}, {"page": "x"}):
        async with http.get(sandbox.base_url + "/faxes", params=bad, headers=auth(sandbox)) as r:
            assert r.status == 422


# -- documents, statuses, webhooks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "pages"),
    [
        ("three.pdf", make_pdf(3), 3),
        ("four.tiff", make_image("TIFF", 4), 4),
        ("one.png", make_image("PNG"), 1),
        ("one.jpg", make_image("JPEG"), 1),
    ],
)
async def test_document_pages_counted(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    name: str,
    data: bytes,
    pages: int,
) -> None:
    """Every documented format is fetched, its pages counted and reported when delivered."""
    # The content type the server claims does not matter: the bytes decide.
    url = document_server.add(name, data, content_type="binary/octet-stream")
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    done = await final(sandbox, fax["id"])
    assert done["status"] == "delivered"
    assert done["pages"] == pages and done["duration"] == pages * 30
    assert done["document"]["pages"] == pages
    assert done["history"] == ["queued", "delivering", "delivered"]
    assert sandbox.document(fax["id"]) == data


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"Hello, this is plain text, not a fax document.", 200, 4201),
        (b"%PDF-1.4\nthis is not really a PDF\n", 200, 4201),
        (make_image("PNG")[:60], 200, 4201),  # truncated image
        (make_pdf(1), 404, 4203),
        (make_pdf(1), 500, 4203),
        (b"%PDF-" + b"x" * 5000, 200, 4202),
    ],
)
async def test_document_refused(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    data: bytes,
    status: int,
    code: int,
) -> None:
    """Not a fax format: 4201; download error: 4203; over the size limit: 4202."""
    sandbox.configure(max_download_bytes=4096)
    url = document_server.add("doc", data, status=status)
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    done = await final(sandbox, fax["id"])
    assert done["status"] == "failed" and done["error"]["code"] == code
    assert done["history"] == ["queued", "failed"]  # refused before dialing
    assert done["download"]["status"] == status


async def test_unreachable_document_host(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """A URL nobody answers at fails with 4203 and says why."""
    url = f"http://127.0.0.1:{free_port()}/gone.pdf"
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    done = await final(sandbox, fax["id"])
    assert done["error"] == {"code": 4203, "description": "file download failed"}
    assert "Connect" in done["download"]["error"]


@pytest.mark.parametrize(
    ("number", "code"), [("+12015550166", 5109), ("+12015550177", 5121), ("+12015550188", 5108)]
)
async def test_scripted_numbers_fail(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    receiver: Receiver,
    number: str,
    code: int,
) -> None:
    """The scripted numbers fail after dialing with their code, in the webhook too."""
    sandbox.set_webhook(receiver.url)
    url = document_server.add("a.pdf", make_pdf())
    _, fax = await post_fax(http, sandbox, {"to": number, "from": FROM, "url": url})
    done = await final(sandbox, fax["id"])
    assert done["history"] == ["queued", "delivering", "failed"]
    assert done["error"]["code"] == code
    await sandbox.wait_for_async(lambda: receiver.calls)
    assert receiver.calls[0]["json"]["error"]["code"] == str(code)


async def test_scripted_outcomes_configurable(
    http: aiohttp.ClientSession, sandbox: Sandbox, document_server: DocumentServer
) -> None:
    """Outcomes can be changed at run time: a number fails, a default one now delivers."""
    sandbox.configure(outcomes={TO: 5148})
    url = document_server.add("a.pdf", make_pdf())
    _, one = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    _, two = await post_fax(http, sandbox, {"to": "+12015550166", "from": FROM, "url": url})
    assert (await final(sandbox, one["id"]))["error"]["code"] == 5148
    assert (await final(sandbox, two["id"]))["status"] == "delivered"


async def test_walk_with_delay_and_post_webhook(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    receiver: Receiver,
) -> None:
    """With a delay the fax is seen queued, then delivering, then delivered; one JSON webhook
    with the documented fields follows, and reads as a Fax."""
    sandbox.configure(delay=0.3, webhook_url=receiver.url)
    url = document_server.add("a.pdf", make_pdf(2))
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url, "attempts": 1})
    async with http.get(f"{sandbox.base_url}/faxes/{fax['id']}", headers=auth(sandbox)) as r:
        assert (await r.json())["status"] == "queued"
    await sandbox.wait_for_async(lambda: sandbox.fax(fax["id"])["status"] == "delivering")
    await sandbox.wait_for_async(lambda: receiver.calls, what="the webhook")
    call = receiver.calls[0]
    assert call["method"] == "POST" and call["content_type"] == "application/json"
    payload = call["json"]
    assert payload["type"] == "fax" and payload["status"] == "delivered"
    assert (payload["pages"], payload["duration"], payload["url"]) == ("2", "60", url)
    assert set(payload) >= {"id", "direction", "to", "from", "status", "time"}
    assert CarrierFax.from_api(payload).pages == 2
    [hook] = sandbox.webhooks()
    assert hook["response_status"] == 200 and hook["attempt"] == 1


async def test_get_webhook(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    receiver: Receiver,
) -> None:
    """GET webhooks carry the fields as query parameters, nested ones in brackets."""
    sandbox.set_webhook(receiver.url, "GET")
    url = document_server.add("a.pdf", make_pdf())
    _, fax = await post_fax(http, sandbox, {"to": "+12015550177", "from": FROM, "url": url})
    await sandbox.wait_for_async(lambda: receiver.calls)
    call = receiver.calls[0]
    assert call["method"] == "GET" and call["json"] is None
    query = dict(call["query"])
    assert query["id"] == fax["id"] and query["error[code]"] == "5121"
    parsed = CarrierFax.from_api(query)
    assert (parsed.status, parsed.error_code) == ("failed", 5121)


async def test_webhook_retried_until_2xx(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    receiver: Receiver,
) -> None:
    """A webhook answered 500 is sent again until a 2xx, every attempt recorded."""
    receiver.statuses = [500, 503]
    sandbox.set_webhook(receiver.url)
    url = document_server.add("a.pdf", make_pdf())
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    hooks = await sandbox.wait_for_async(
        lambda: (
            [h for h in sandbox.webhooks(fax["id"]) if h["response_status"] == 200]
            and sandbox.webhooks(fax["id"])
        )
    )
    assert [(h["attempt"], h["response_status"]) for h in hooks] == [(1, 500), (2, 503), (3, 200)]
    assert len(receiver.calls) == 3


async def test_webhook_retries_are_bounded(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
) -> None:
    """A webhook target that never answers is given up on after webhook_attempts tries."""
    sandbox.configure(webhook_url=f"http://127.0.0.1:{free_port()}/hook", webhook_attempts=3)
    url = document_server.add("a.pdf", make_pdf())
    await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    await sandbox.wait_for_async(lambda: len(sandbox.webhooks()) >= 3)
    hooks = sandbox.webhooks()
    assert [h["attempt"] for h in hooks] == [1, 2, 3]
    assert all(h["response_status"] is None and h["error"] for h in hooks)
    # Given up: nothing is left running that could send a fourth.
    await sandbox.wait_for_async(lambda: sandbox.busy() == 0, what="the sandbox to be idle")
    assert len(sandbox.webhooks()) == 3


async def test_drop_and_resend_webhook(
    http: aiohttp.ClientSession,
    sandbox: Sandbox,
    document_server: DocumentServer,
    receiver: Receiver,
) -> None:
    """A dropped webhook never reaches the target; the control API sends it again on demand."""
    sandbox.set_webhook(receiver.url)
    sandbox.drop_webhooks(1)
    url = document_server.add("a.pdf", make_pdf())
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    await sandbox.wait_for_async(lambda: sandbox.webhooks(fax["id"]))
    assert sandbox.webhooks(fax["id"])[0]["dropped"] is True
    assert receiver.calls == []
    sandbox.resend_webhook(fax["id"])
    await sandbox.wait_for_async(lambda: receiver.calls)
    assert receiver.calls[0]["json"]["status"] == "delivered"
    assert sandbox.webhooks(fax["id"])[-1]["reason"] == "resend"


async def test_finish_ends_a_fax_early(
    http: aiohttp.ClientSession, sandbox: Sandbox, document_server: DocumentServer
) -> None:
    """finish() ends a slow fax at once, with the error code given."""
    sandbox.configure(delay=30)
    url = document_server.add("a.pdf", make_pdf())
    _, fax = await post_fax(http, sandbox, {"to": TO, "from": FROM, "url": url})
    await sandbox.wait_for_async(lambda: sandbox.fax(fax["id"])["document"])
    done = sandbox.finish(fax["id"], 5149)
    assert done["status"] == "failed" and done["error"]["code"] == 5149
    # The walk was cancelled: no later step overwrites the result.
    assert sandbox.fax(fax["id"])["history"] == ["queued", "failed"]


# -- inbound ---------------------------------------------------------------------------------


async def test_inbound_fax(
    http: aiohttp.ClientSession, sandbox: Sandbox, receiver: Receiver
) -> None:
    """An inbound fax is announced by webhook with links.media, whose file downloads
    without the API key, and shows in the API as received."""
    sandbox.set_webhook(receiver.url)
    document = make_image("TIFF", 2)
    created = sandbox.inbound(FROM, "+14155550100", document)
    assert created["direction"] == "inbound" and created["status"] == "receiving"
    await sandbox.wait_for_async(lambda: receiver.calls)
    payload = receiver.calls[0]["json"]
    fax = CarrierFax.from_api(payload)
    assert (fax.direction, fax.status, fax.pages) == ("inbound", "received", 2)
    assert (fax.to_e164, fax.from_e164) == (FROM, "+14155550100")
    assert fax.media_url and fax.media_url.startswith(sandbox.root_url)
    async with http.get(fax.media_url) as response:
        assert response.status == 200
        assert response.content_type == "image/tiff"
        assert await response.read() == document
    async with http.get(fax.media_url + "x") as response:
        assert response.status == 404
    media_requests = sandbox.requests(fax.media_url.removeprefix(sandbox.root_url))
    assert [r["status"] for r in media_requests] == [200]
    async with http.get(f"{sandbox.base_url}/faxes/{fax.id}", headers=auth(sandbox)) as r:
        shown = await r.json()
    assert shown["status"] == "received" and shown["links"] == [{"media": fax.media_url}]


def test_inbound_refuses_non_documents(sandbox: Sandbox) -> None:
    """The control API refuses an inbound 'fax' that is not a fax document."""
    with pytest.raises(AssertionError, match="not a fax document"):
        sandbox.inbound(FROM, "+14155550100", b"just text")


# -- faults ----------------------------------------------------------------------------------


async def test_faults_count_and_filter(http: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    """An error fault answers its count of matching requests, then the API answers again."""
    sandbox.fail_next(2, status=503, method="GET", path="/api/v1/faxes")
    statuses = []
    for _ in range(3):
        async with http.get(sandbox.base_url + "/faxes", headers=auth(sandbox)) as resp:
            statuses.append(resp.status)
    assert statuses == [503, 503, 200]
    assert [r["fault"] for r in sandbox.requests()] == ["error", "error", None]


def test_query_items_flatten() -> None:
    """Nested webhook fields become bracketed query parameters."""
    assert query_items({"a": "1", "error": {"code": "5"}, "links": [{"media": "m"}]}) == [
        ("a", "1"),
        ("error[code]", "5"),
        ("links[0][media]", "m"),
    ]


# -- command line ----------------------------------------------------------------------------


def test_sandbox_command(tmp_path: Path) -> None:
    """`fax-gateway sandbox` serves the API with the given key until SIGTERM, then exits 0."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "sandbox",
            "--listen",
            f"127.0.0.1:{port}",
            "--api-key",
            "cli-key-123456",
            "--delay",
            "0",
            "--page-size",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.strip() == f"sandbox carrier listening on http://127.0.0.1:{port}"
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/faxes",
            headers={"Authorization": "Bearer cli-key-123456"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            assert json.loads(response.read()) == {"page_size": 5, "results": []}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0, err
    assert "+12015550166 fails with 5109" in out


def test_sandbox_help_lists_scripted_numbers() -> None:
    """--help names the scripted numbers and their codes."""
    result = run_cli("sandbox", "--help")
    assert result.returncode == 0
    for number in ("+12015550166", "+12015550177", "+12015550188"):
        assert number in result.stdout


def test_inbound_command(sandbox: Sandbox, tmp_path: Path) -> None:
    """`fax-gateway sandbox inbound` makes an inbound fax arrive at a running sandbox."""
    document = tmp_path / "scan.pdf"
    document.write_bytes(make_pdf(2))
    result = run_cli(
        "sandbox",
        "inbound",
        "--sandbox-url",
        sandbox.base_url,
        "--to",
        FROM,
        "--from",
        "+14155550100",
        str(document),
    )
    assert result.returncode == 0, result.stderr
    [fax] = sandbox.faxes()
    assert fax["id"] in result.stdout and "2 page(s)" in result.stdout
    assert fax["direction"] == "inbound" and fax["document"]["pages"] == 2


def test_inbound_command_errors(sandbox: Sandbox, tmp_path: Path) -> None:
    """A missing file, a non-document and an unreachable sandbox are user errors (exit 2)."""
    text = tmp_path / "note.txt"
    text.write_text("not a fax")
    cases = [
        (sandbox.root_url, str(tmp_path / "missing.pdf"), "No such file"),
        (sandbox.root_url, str(text), "not a fax document"),
        (f"http://127.0.0.1:{free_port()}", str(text), "cannot reach the sandbox"),
    ]
    for url, path, message in cases:
        result = run_cli(
            "sandbox", "inbound", "--sandbox-url", url, "--to", FROM, "--from", FROM, path
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


async def test_server_runs_on_callers_loop() -> None:
    """SandboxServer runs on the caller's own loop and stops cleanly with work in flight."""
    from gateway.sandbox import SandboxServer, SandboxSettings

    server = SandboxServer(SandboxSettings(api_key="k", delay=60))
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.base_url + "/faxes",
                json={"to": TO, "from": FROM, "url": f"http://127.0.0.1:{free_port()}/x.pdf"},
                headers={"Authorization": "Bearer k"},
            ) as response,
        ):
            assert response.status == 200
    finally:
        await asyncio.wait_for(server.stop(), 5)
    assert server.state.tasks == set()
