"""The Voxtelesys client against the real sandbox carrier over HTTP: results, errors, retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.carrier import (
    AuthError,
    BadResponse,
    CarrierFax,
    CarrierUnavailable,
    NotFound,
    Outcome,
    PayloadError,
    Rejected,
    ServerError,
    VoxtelesysClient,
    classify,
)
from gateway.carrier.models import unflatten_query
from gateway.config import Config
from gateway.queue.backoff import RetryPolicy
from tests.conftest import free_port, merge, run_cli
from tests.servers.sandbox import DocumentServer, Sandbox, make_pdf

FAST = RetryPolicy(attempts=3, min_delay=0.01, max_delay=0.02, deadline=5.0)
ONCE = RetryPolicy.never()
TO = "+12015550123"
FROM = "+12015550100"


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[VoxtelesysClient]:
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, retry=FAST) as api:
        yield api


@pytest.fixture
def pdf_url(document_server: DocumentServer) -> str:
    return document_server.add("doc.pdf", make_pdf(2))


async def test_send_and_get_fax(sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str) -> None:
    """send_fax posts E.164 with '+' and returns the queued fax; get_fax shows its result."""
    fax = await client.send_fax(TO, FROM, pdf_url, attempts=2)
    assert fax.status == "queued"
    assert fax.direction == "outbound"
    assert fax.to == "12015550123" and fax.to_e164 == TO
    assert fax.url == pdf_url and fax.attempts == 2
    assert isinstance(fax.created_at, datetime) and fax.created_at.tzinfo is not None
    posted = sandbox.requests("/faxes", "POST")[0]["body"]
    assert posted == {"to": TO, "from": FROM, "url": pdf_url, "attempts": 2}

    await sandbox.wait_for_async(lambda: sandbox.fax(fax.id)["status"] == "delivered")
    done = await client.get_fax(fax.id)
    assert (done.status, done.pages, done.has_error) == ("delivered", 2, False)
    assert done.outcome(["delivered"]) is Outcome.SUCCEEDED


async def test_attempts_omitted_when_not_given(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """Without attempts the body leaves the field out and the carrier's default (3) applies."""
    fax = await client.send_fax(TO, FROM, pdf_url, None)
    assert "attempts" not in sandbox.requests("/faxes", "POST")[0]["body"]
    assert fax.attempts == 3


async def test_scripted_failure_carries_error(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """A failed fax comes back with its error code, description and retry advice."""
    fax = await client.send_fax("+12015550166", FROM, pdf_url, None)
    await sandbox.wait_for_async(lambda: sandbox.fax(fax.id)["status"] == "failed")
    failed = await client.get_fax(fax.id)
    assert (failed.error_code, failed.error_description) == (5109, "far end is not able to receive")
    assert failed.error_info is not None and failed.error_info.retryable
    assert failed.outcome(["delivered"]) is Outcome.FAILED


async def test_wrong_key_is_auth_error_not_retried(sandbox: Sandbox) -> None:
    """401 becomes AuthError with the documented message and error id, tried once, logged
    loudly, and the key appears in no log line."""
    async with VoxtelesysClient(sandbox.base_url, "wrong-key-123456", retry=FAST) as api:
        with capture_logs() as logs, pytest.raises(AuthError) as caught:
            await api.get_fax("anything")
    error = caught.value
    assert error.http_status == 401 and not error.transient
    assert error.message == "unauthorized" and error.error_id
    assert len(sandbox.requests()) == 1
    assert any(e["event"] == "carrier.auth_failed" and e["log_level"] == "error" for e in logs)
    assert "wrong-key-123456" not in json.dumps(logs, default=str)


async def test_unknown_fax_is_not_found(client: VoxtelesysClient) -> None:
    """404 becomes NotFound with the carrier's message, left to the caller to log."""
    with capture_logs() as logs, pytest.raises(NotFound) as caught:
        await client.get_fax("fc90ecf7-ada9-4843-9bd2-3cd9ddfa33b7")
    assert caught.value.http_status == 404 and caught.value.message == "fax not found"
    assert [e for e in logs if e["log_level"] != "debug"] == []


async def test_invalid_request_is_rejected_once(sandbox: Sandbox, client: VoxtelesysClient) -> None:
    """422 becomes Rejected with the message for the user, and is never retried."""
    with pytest.raises(Rejected) as caught:
        await client.send_fax(TO, FROM, "ftp://example.com/file.pdf", None)
    assert caught.value.http_status == 422
    assert "invalid url" in caught.value.message
    assert [r["status"] for r in sandbox.requests()] == [422]


async def test_server_error_retried_then_success(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """Two 500s, then the answer: the caller sees only the answer."""
    fax = await client.send_fax(TO, FROM, pdf_url, None)
    sandbox.fail_next(2, method="GET")
    assert (await client.get_fax(fax.id)).id == fax.id
    assert [r["status"] for r in sandbox.requests(f"/faxes/{fax.id}")] == [500, 500, 200]


async def test_server_error_gives_up_after_attempts(
    sandbox: Sandbox, client: VoxtelesysClient
) -> None:
    """Persistent 500s end in ServerError (transient, with error id) after the policy's tries."""
    sandbox.fail_next(10)
    with pytest.raises(ServerError) as caught:
        await client.get_fax("x")
    assert caught.value.transient and caught.value.error_id
    assert len(sandbox.requests()) == FAST.attempts


@pytest.mark.parametrize(("body", "expected"), [("text", "Service unavailable"), ("empty", "")])
async def test_non_json_error_body(sandbox: Sandbox, body: str, expected: str) -> None:
    """An HTML or empty error body from a proxy gives a readable message, no crash."""
    sandbox.fail_next(1, status=502, body=body)
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, retry=ONCE) as api:
        with pytest.raises(ServerError) as caught:
            await api.get_fax("x")
    assert caught.value.http_status == 502 and caught.value.error_id is None
    assert caught.value.message.startswith("HTTP 502")
    assert expected in caught.value.message and "<" not in caught.value.message


async def test_timeout_is_carrier_unavailable(sandbox: Sandbox) -> None:
    """An answer slower than the client's timeout becomes a transient CarrierUnavailable."""
    sandbox.slow(5.0)
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, timeout=0.3, retry=ONCE) as api:
        with pytest.raises(CarrierUnavailable) as caught:
            await api.get_fax("x")
    assert caught.value.transient and caught.value.http_status is None
    assert "within 0.3s" in caught.value.message


async def test_slow_answer_then_retry_succeeds(sandbox: Sandbox, pdf_url: str) -> None:
    """A timed-out request is retried, and the retry's answer is returned."""
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, retry=FAST) as api:
        fax = await api.send_fax(TO, FROM, pdf_url, None)
        sandbox.slow(10.0, method="GET")
        api.timeout = 3.0  # long enough for the retry's own answer on a busy machine
        assert (await api.get_fax(fax.id)).id == fax.id


async def test_closed_port_is_carrier_unavailable() -> None:
    """Nobody listening: CarrierUnavailable naming the address, after the policy's tries."""
    port = free_port()
    async with VoxtelesysClient(f"http://127.0.0.1:{port}/api/v1", "k", retry=FAST) as api:
        with pytest.raises(CarrierUnavailable) as caught:
            await api.check()
    assert f"127.0.0.1:{port}" in caught.value.message


async def test_pagination_over_pages(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """list_faxes follows next_page across pages to the end, newest first, and can start
    at a page number."""
    sandbox.configure(page_size=2)
    sent = [await client.send_fax(TO, FROM, pdf_url, None) for _ in range(7)]
    listed = [fax.id async for fax in client.list_faxes()]
    assert listed == [fax.id for fax in reversed(sent)]
    gets = sandbox.requests("/faxes", "GET")
    assert len(gets) == 4
    assert "next_page" not in gets[0]["query"]
    assert all(g["query"].get("next_page") for g in gets[1:])
    from_page_3 = [fax.id async for fax in client.list_faxes(page=3)]
    assert from_page_3 == listed[4:]


async def test_send_retry_does_not_duplicate(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """When the answer to a POST is lost after the fax was created, the retry finds that fax
    instead of sending a second one."""
    sandbox.disconnect_next(1, method="POST", when="after")
    fax = await client.send_fax(TO, FROM, pdf_url, None)
    assert len(sandbox.faxes()) == 1
    assert fax.id == sandbox.faxes()[0]["id"]
    assert len(sandbox.requests("/faxes", "POST")) == 1
    assert len(sandbox.requests("/faxes", "GET")) == 1  # the lookup that found it


async def test_send_retry_after_500_posts_again(
    sandbox: Sandbox, client: VoxtelesysClient, pdf_url: str
) -> None:
    """A 500 that created nothing: the retry looks, finds nothing, and posts again."""
    sandbox.fail_next(1, method="POST")
    fax = await client.send_fax(TO, FROM, pdf_url, None)
    assert [f["id"] for f in sandbox.faxes()] == [fax.id]
    assert [r["status"] for r in sandbox.requests("/faxes", "POST")] == [500, 200]
    assert len(sandbox.requests("/faxes", "GET")) == 1


async def test_find_fax_by_url_matches_url_and_recipient(
    client: VoxtelesysClient, document_server: DocumentServer
) -> None:
    """find_fax_by_url tells faxes of one document to different recipients apart."""
    url = document_server.add("multi.pdf", make_pdf(1))
    since = datetime.now(UTC) - timedelta(seconds=5)  # the carrier's clock keeps milliseconds
    first = await client.send_fax(TO, FROM, url, None)
    second = await client.send_fax("+12015550124", FROM, url, None)
    found = await client.find_fax_by_url(url, TO, since=since)
    assert found is not None and found.id == first.id
    found = await client.find_fax_by_url(url, "+12015550124", since=since)
    assert found is not None and found.id == second.id
    assert await client.find_fax_by_url(url, "+12015550125", since=since) is None
    assert (
        await client.find_fax_by_url(url, TO, since=datetime.now(UTC) + timedelta(hours=1)) is None
    )


async def test_check(sandbox: Sandbox) -> None:
    """check() passes with the right key and raises AuthError with a wrong one."""
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, retry=ONCE) as api:
        await api.check()
    async with VoxtelesysClient(sandbox.base_url, "nope-nope-nope", retry=ONCE) as api:
        with pytest.raises(AuthError):
            await api.check()


async def test_from_config(sandbox: Sandbox, make_config: Callable[..., Config]) -> None:
    """from_config takes base URL, key and timeout from the configuration."""
    config = make_config(sandbox.config_override())
    async with VoxtelesysClient.from_config(config.voxtelesys, retry=ONCE) as api:
        assert api.base_url == sandbox.base_url
        assert api.timeout == config.voxtelesys.timeout_seconds
        assert "test-api-key" not in repr(api)
        await api.check()


# -- a misbehaving carrier: answers the sandbox never gives ---------------------------------


async def _odd_carrier(routes: dict[str, Callable[[web.Request], Any]]) -> web.AppRunner:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.fixture
async def odd_carrier() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A real HTTP server answering 200 with bodies that break the documented shapes."""

    async def not_json(_request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    async def bad_fax(_request: web.Request) -> web.Response:
        return web.json_response({"status": "queued"})

    async def looping(_request: web.Request) -> web.Response:
        fax = {"id": "a", "direction": "outbound", "to": "1", "from": "2", "status": "queued"}
        return web.json_response({"next_page": "same", "results": [fax]})

    runner = await _odd_carrier(
        {"/api/v1/faxes/text": not_json, "/api/v1/faxes/bad": bad_fax, "/api/v1/faxes": looping}
    )
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1", {}
    finally:
        await runner.cleanup()


async def test_unreadable_success_bodies(odd_carrier: tuple[str, dict[str, Any]]) -> None:
    """A 200 that is not JSON, a fax without an id, and a cursor that repeats are BadResponse."""
    base_url, _ = odd_carrier
    async with VoxtelesysClient(base_url, "k", retry=FAST) as api:
        with pytest.raises(BadResponse, match="not JSON"):
            await api.get_fax("text")
        with pytest.raises(BadResponse, match="missing id"):
            await api.get_fax("bad")
        with pytest.raises(BadResponse, match="same next_page"):
            [fax async for fax in api.list_faxes()]


# -- a proxy from the environment ------------------------------------------------------------

_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[web.Request]]:
    """A real HTTP server named by HTTP_PROXY (with a login), answering every GET with a fax:
    the requests it saw."""
    seen: list[web.Request] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request)
        fax = {"id": "p", "direction": "outbound", "to": "1", "from": "2", "status": "queued"}
        return web.json_response(fax)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://squid:secret@127.0.0.1:{port}")
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_requests_go_through_the_environments_proxy(proxy: list[web.Request]) -> None:
    """HTTP_PROXY (with its login) carries every request to a carrier we cannot reach directly."""
    unreachable = f"http://127.0.0.1:{free_port()}/api/v1"
    async with VoxtelesysClient(unreachable, "k", retry=ONCE) as api:
        assert (await api.get_fax("p")).id == "p"
        assert (await api.get_fax("p")).id == "p"
    assert len(proxy) == 2
    assert all(str(r.url).startswith(unreachable) for r in proxy)
    assert proxy[0].headers["Proxy-Authorization"].startswith("Basic ")
    assert proxy[0].headers["Authorization"] == "Bearer k"


async def test_no_proxy_sends_requests_directly(
    proxy: list[web.Request], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A carrier host named in NO_PROXY is asked directly, the proxy never sees a request."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with VoxtelesysClient(sandbox.base_url, sandbox.api_key, retry=ONCE) as api:
        with pytest.raises(NotFound):
            await api.get_fax("x")
    assert proxy == []


# -- payloads and statuses -------------------------------------------------------------------

DOC_FAILED = {
    "id": "fc90ecf7-ada9-4843-9bd2-3cd9ddfa33b7",
    "created_at": "2024-01-01T16:51:16.979Z",
    "modified_at": "2024-01-01T16:51:17.320Z",
    "direction": "outbound",
    "to": "15556667777",
    "from": "15556668888",
    "status": "failed",
    "url": "https://example.com/file.pdf",
    "pages": 0,
    "duration": 0,
    "attempts": 1,
    "error": {"code": 5312, "description": "internal error"},
}


def test_documented_response_reads() -> None:
    """The documentation's example fax reads into every field."""
    fax = CarrierFax.from_api(DOC_FAILED)
    assert fax.created_at == datetime(2024, 1, 1, 16, 51, 16, 979000, tzinfo=UTC)
    assert (fax.pages, fax.duration, fax.attempts) == (0, 0, 1)
    assert (fax.error_code, fax.error_description) == (5312, "internal error")
    assert fax.from_e164 == "+15556668888"
    assert fax.to_dict()["from"] == "15556668888"


def test_webhook_payload_variants() -> None:
    """Webhook shapes: string counts and codes, links as list, object or JSON string."""
    base = {
        "type": "fax",
        "id": "f1",
        "direction": "Inbound",
        "to": "15556667777",
        "from": "+15556668888",
        "status": "received",
        "time": "2024-06-19T15:38:17.140Z",
        "pages": "3",
        "duration": "61.6",
        "unknown": {"ignored": True},
    }
    media = "https://media.example/f1.pdf"
    for links in ([{"media": media}], {"media": media}, json.dumps([{"media": media}]), media):
        fax = CarrierFax.from_api({**base, "links": links})
        assert fax.media_url == media
    fax = CarrierFax.from_api({**base, "error": {"code": "5109", "description": "busy"}})
    assert (fax.direction, fax.pages, fax.duration, fax.time) == (
        "inbound",
        3,
        62,
        "2024-06-19T15:38:17.140Z",
    )
    assert fax.error_code == 5109 and fax.has_error


def test_query_parameters_read_as_payload() -> None:
    """A GET webhook's bracketed or dotted parameters read like the JSON body."""
    query = [
        ("type", "fax"),
        ("id", "f2"),
        ("direction", "outbound"),
        ("to", "15556667777"),
        ("from", "15556668888"),
        ("status", "failed"),
        ("pages", "0"),
        ("error[code]", "5121"),
        ("error.description", "no response after sending a page"),
        ("links[0][media]", "https://m/x"),
    ]
    assert unflatten_query(query)["error"] == {
        "code": "5121",
        "description": "no response after sending a page",
    }
    fax = CarrierFax.from_api(dict(query))
    assert (fax.error_code, fax.media_url) == (5121, "https://m/x")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "missing id"),
        ({"status": ""}, "status is empty"),
        ({"to": ""}, "to is empty"),
        ({"direction": ["x"]}, "direction must be a string"),
    ],
)
def test_payload_errors(change: dict[str, Any], reason: str) -> None:
    """A missing or unusable required field raises PayloadError with the reason."""
    with pytest.raises(PayloadError, match=reason):
        CarrierFax.from_api({**DOC_FAILED, **change})
    with pytest.raises(PayloadError):
        CarrierFax.from_api(["not", "an", "object"])  # type: ignore[arg-type]


def test_lenient_optional_fields() -> None:
    """Unusable optional values become None instead of failing the payload; a withheld
    caller number is kept as given."""
    fax = CarrierFax.from_api(
        {**DOC_FAILED, "pages": "many", "duration": -1, "created_at": "yesterday", "error": None}
    )
    assert (fax.pages, fax.duration, fax.created_at, fax.has_error) == (None, None, None, False)
    assert CarrierFax.from_api({**DOC_FAILED, "pages": "inf", "duration": 1e400}).pages is None
    anonymous = CarrierFax.from_api({**DOC_FAILED, "direction": "inbound", "from": "anonymous"})
    assert (anonymous.from_, anonymous.from_e164) == ("anonymous", "anonymous")
    assert CarrierFax.from_api({k: v for k, v in DOC_FAILED.items() if k != "from"}).from_ == ""
    assert CarrierFax.from_api({**DOC_FAILED, "created_at": 1704127876}).created_at == datetime(
        2024, 1, 1, 16, 51, 16, tzinfo=UTC
    )


# JSON values as a carrier (or a forger, without verification) may send them, with the shapes
# that trip Python's conversions: huge integers, non-ASCII digits, 5000-digit strings.
_ODD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["\u00b2", "\u0663", "9" * 5000, "1e999", "-0", "12" * 8]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_OPTIONAL = ["created_at", "modified_at", "pages", "duration", "attempts", "error", "links", "time"]


@settings(max_examples=300, database=None, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(_OPTIONAL), value=_ODD_VALUES)
def test_odd_optional_values_never_break_a_payload(key: str, value: Any) -> None:
    """Any JSON in an optional field reads as a Fax (or PayloadError), with storable counts."""
    try:
        fax = CarrierFax.from_api({**DOC_FAILED, key: value})
    except PayloadError:
        return
    for number in (fax.pages, fax.duration, fax.attempts, fax.error_code):
        assert number is None or 0 <= number < 2**31


def test_an_error_code_out_of_range_is_no_code() -> None:
    """An error code too large to be one keeps the fax failed, without a code to store."""
    for error in (10**30, {"code": 10**30}, {"code": "-5"}):
        fax = CarrierFax.from_api({**DOC_FAILED, "error": error})
        assert fax.error_code is None and fax.has_error


@pytest.mark.parametrize("index", ["\u00b2", "9" * 5000])
def test_odd_query_indexes_stay_keys(index: str) -> None:
    """A bracketed index that is no small ASCII number is kept as a key, not a list index."""
    assert unflatten_query([(f"links[{index}][media]", "x")]) == {"links": {index: {"media": "x"}}}


def test_classify() -> None:
    """Error objects and failure words fail, success words succeed, the rest is pending and
    each unknown word is logged once."""
    success = ("delivered", "received")
    assert classify("delivered", False, success) is Outcome.SUCCEEDED
    assert classify("Delivered ", False, success) is Outcome.SUCCEEDED
    assert classify("delivered", True, success) is Outcome.FAILED
    assert classify("failed", False, success) is Outcome.FAILED
    assert classify("failed", False, ["failed"]) is Outcome.FAILED
    assert classify("queued", False, success) is Outcome.PENDING
    with capture_logs() as logs:
        assert classify("teleported-xyz", False, success) is Outcome.PENDING
        assert classify("teleported-xyz", False, success) is Outcome.PENDING
        assert classify("delivering", False, success) is Outcome.PENDING
    unknown = [e for e in logs if e["event"] == "carrier.status_unknown"]
    assert [e["status"] for e in unknown] == ["teleported-xyz"]


# -- the command line: send, status, list as subprocesses against the sandbox -------------


@pytest.fixture
def sandbox_config(
    sandbox: Sandbox, write_config: Callable[..., Path], config_data: dict[str, Any]
) -> str:
    """A gateway configuration file pointing at the sandbox."""
    return str(write_config(merge(config_data, sandbox.config_override())))


def test_cli_send_and_status(sandbox: Sandbox, sandbox_config: str, pdf_url: str) -> None:
    """`send` posts the fax and prints its id; `status` shows it, as text and as JSON."""
    result = run_cli("send", "--config", sandbox_config, "--to", "(201) 555-0123", "--url", pdf_url)
    assert result.returncode == 0, result.stderr
    [fax] = sandbox.faxes()
    assert result.stdout.startswith(f"fax {fax['id']} queued: to +1 201-555-0123")
    body = sandbox.requests("/faxes", "POST")[0]["body"]
    assert body == {"to": TO, "from": FROM, "url": pdf_url, "attempts": 3}

    sandbox.wait_for(lambda: sandbox.fax(fax["id"])["status"] == "delivered")
    shown = run_cli("status", "--config", sandbox_config, fax["id"])
    assert shown.returncode == 0, shown.stderr
    assert "status     delivered (succeeded)" in shown.stdout
    assert "pages      2" in shown.stdout
    as_json = run_cli("status", "--config", sandbox_config, "--json", fax["id"])
    assert json.loads(as_json.stdout)["status"] == "delivered"


def test_cli_send_wait_reports_failure(sandbox: Sandbox, sandbox_config: str, pdf_url: str) -> None:
    """`send --wait` follows the fax to its end and exits 1 with the error when it failed."""
    result = run_cli(
        "send",
        "--config",
        sandbox_config,
        "--to",
        "+12015550166",
        "--url",
        pdf_url,
        "--attempts",
        "1",
        "--wait",
    )
    assert result.returncode == 1, result.stderr
    assert "\nstatus     failed\n" in result.stdout  # not "failed (failed)"
    assert "5109 far end is not able to receive (worth retrying later)" in result.stdout
    assert sandbox.requests("/faxes", "POST")[0]["body"]["attempts"] == 1


def test_cli_user_errors(sandbox: Sandbox, sandbox_config: str, pdf_url: str) -> None:
    """Bad numbers, refused destinations and unknown fax ids exit 2 with a message."""
    cases = [
        (["send", "--to", "call me", "--url", pdf_url], "--to: 'call me' is not a fax number"),
        (["send", "--to", "+19005550100", "--url", pdf_url], "are blocked on this gateway"),
        (["send", "--to", TO, "--url", "file:///tmp/x.pdf"], "is not an http(s) URL"),
        (["status", "no-such-fax"], "the carrier has no fax with id 'no-such-fax'"),
    ]
    for args, message in cases:
        result = run_cli(*args, "--config", sandbox_config)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    assert sandbox.faxes() == []


def test_cli_rejected_and_refused_key(
    sandbox: Sandbox,
    write_config: Callable[..., Path],
    config_data: dict[str, Any],
    pdf_url: str,
) -> None:
    """A refused API key (401) is a user error with a hint; an unreachable carrier exits 1."""
    wrong = merge(config_data, sandbox.config_override())
    wrong["voxtelesys"]["api_key"] = "not-the-right-key"
    result = run_cli("list", "--config", str(write_config(wrong, "wrong.toml")))
    assert result.returncode == 2
    assert "refused the API key" in result.stderr and "check voxtelesys.api_key" in result.stderr
    assert "not-the-right-key" not in result.stderr

    down = merge(config_data, {"voxtelesys": {"base_url": f"http://127.0.0.1:{free_port()}"}})
    result = run_cli("status", "abc", "--config", str(write_config(down, "down.toml")))
    assert result.returncode == 1
    assert "could not be reached" in result.stderr and "Traceback" not in result.stderr


def test_cli_list(sandbox: Sandbox, sandbox_config: str, pdf_url: str) -> None:
    """`list` pages through everything into a table, filters by direction, limits, and
    prints JSON."""
    sandbox.configure(page_size=2)
    for number in ("+12015550123", "+12015550166", "+12015550124"):
        run_cli("send", "--config", sandbox_config, "--to", number, "--url", pdf_url)
    inbound = sandbox.inbound(FROM, "+14155550100", make_pdf(1))
    sandbox.wait_for(lambda: sandbox.busy() == 0 and len(sandbox.faxes()) == 4)

    table = run_cli("list", "--config", sandbox_config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["CREATED", "(UTC)", "DIRECTION"]
    assert len(lines) == 5
    assert inbound["id"] in lines[1] and "received" in lines[1]
    assert any("5109 far end is not able to receive" in line for line in lines)

    only_in = run_cli("list", "--config", sandbox_config, "--direction", "inbound", "--json")
    assert [fax["id"] for fax in json.loads(only_in.stdout)] == [inbound["id"]]
    limited = run_cli("list", "--config", sandbox_config, "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)) == 1
    # The limit stops paging: one page was enough.
    assert len(sandbox.requests("/faxes", "GET")) == 2 + 2 + 1


@pytest.mark.parametrize("key", ["0", ".1", "[0][a]"])
def test_numeric_top_level_keys_never_turn_a_payload_into_a_list(key: str) -> None:
    """`?0=a` or `{".1": ...}` stays an object, so it reads as an incomplete fax (found by
    the webhook fuzz target: it raised AttributeError, a 500 at the endpoint)."""
    assert isinstance(unflatten_query([(key, "a")]), dict)
    with pytest.raises(PayloadError):
        CarrierFax.from_api({key: {"a": ""}})
