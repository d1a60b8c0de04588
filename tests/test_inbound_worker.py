"""Inbound faxes: download limits, routing, formats, and a fax that is never dropped.

The media is served by a real aiohttp server on a free port, the store is real SQLite, mail
goes through the real outbox to a capturing relay. Announcements are made with the inbound
repository, as the events worker makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.config import Address, Config, RouteConfig
from gateway.document.workers import DocumentWorkers
from gateway.inbound.compose import attachments_for, shown_number
from gateway.inbound.download import DownloadError, download
from gateway.inbound.files import list_dead_letters, requeue_dead_letter
from gateway.inbound.worker import InboundWorker
from gateway.mailout.outbox import OutboxWorker
from gateway.mailout.relay import create_relay
from gateway.mailout.templates import MailRenderer
from gateway.ops.httpd import HttpServer
from gateway.queue.runner import run_until_idle
from gateway.store import Database
from gateway.store import outbox as outbox_store
from gateway.store.inbound import InboundFax, InboundState, announce_inbound, get_inbound
from tests import samples
from tests.helpers import Clock, attachments, subject_of, until
from tests.servers.relay import CapturingRelay

ROUTED = "+12015550142"
CALLER = "+15556668888"
API_KEY = "test-api-key-abcdef"


@dataclass
class Media:
    """Two media servers (the carrier's origin and a storage origin) with scripted answers."""

    carrier_url: str
    storage_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    # Set at teardown: the "stalls" answer waits for it, so stopping the server is quick.
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def media() -> AsyncIterator[Media]:
    servers: list[HttpServer] = []
    holder: list[Media] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        state = holder[0]
        name = request.match_info["name"]
        state.seen.append((f"{request.host}{request.path}", request.headers.get("Authorization")))
        if state.failures.get(name, 0) > 0:
            state.failures[name] -= 1
            raise web.HTTPServiceUnavailable()
        if name == "to-storage":
            raise web.HTTPFound(f"{state.storage_url}/media/stored.tif")
        if name == "to-nowhere":
            # A Location no URL parser accepts (an unclosed IPv6 bracket).
            return web.Response(status=302, headers={"Location": "http://[::1/media/x"})
        if name == "endless":
            # No Content-Length: the limit must hold while reading.
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"\0" * 1024)
            await response.write_eof()
            return response
        if name == "stalls":
            await state.release.wait()
        data = state.files.get(name)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    for _ in range(2):
        app = web.Application()
        app.router.add_get("/media/{name}", serve)
        server = HttpServer(app, Address("127.0.0.1", 0))
        await server.start()
        servers.append(server)
    state = Media(
        carrier_url=f"http://127.0.0.1:{servers[0].port}",
        storage_url=f"http://localhost:{servers[1].port}",
    )
    holder.append(state)
    yield state
    state.release.set()
    for server in servers:
        await server.stop()


@dataclass
class Inbound:
    config: Config
    db: Database
    clock: Clock
    worker: InboundWorker
    outbox: OutboxWorker
    relay: CapturingRelay
    media: Media
    documents: DocumentWorkers

    async def announce(self, name: str, *, to: str = ROUTED, caller: str = CALLER) -> int:
        inbound_id = await self.db.run(
            announce_inbound,
            carrier_id=f"in-{name}",
            from_number=caller,
            to_number=to,
            pages=2,
            duration=64,
            fax_time="2024-06-19T15:38:17.140Z",
            media_url=f"{self.media.carrier_url}/media/{name}",
            now=self.clock(),
        )
        assert inbound_id is not None
        return inbound_id

    async def row(self, inbound_id: int) -> InboundFax:
        row = await self.db.run(get_inbound, inbound_id)
        assert row is not None
        return row

    async def settle(self) -> None:
        await run_until_idle([self.worker, self.outbox])

    def reconfigure(self, override: dict[str, Any]) -> None:
        """A new worker on a changed configuration (what a reload does), same store."""
        self.config = self.config.model_copy(update=override)
        self.worker = _worker(self.config, self.db, self.clock, self.documents)


def _worker(
    config: Config, db: Database, clock: Clock, documents: DocumentWorkers
) -> InboundWorker:
    return InboundWorker(
        config=config,
        db=db,
        documents=documents,
        renderer=MailRenderer(config.templates.dir),
        outbox_dir=config.data.dir / "outbox",
        clock=clock,
    )


@pytest.fixture
async def start_inbound(
    make_config: Callable[..., Config], relay_server: CapturingRelay, media: Media
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Database] = []
    pools: list[DocumentWorkers] = []

    async def start(override: dict[str, Any] | None = None) -> Inbound:
        base: dict[str, Any] = {
            "relay": relay_server.relay_config_overrides(),
            "voxtelesys": {"base_url": f"{media.carrier_url}/api/v1", "api_key": API_KEY},
            "inbound": {
                "routes": {ROUTED: ["fax-desk@example.com"]},
                "default_recipients": ["office@example.com"],
            },
        }
        for key, value in (override or {}).items():
            base[key] = {**base.get(key, {}), **value}
        config = make_config(base)
        db = await Database(config.data.dir / "store.db").open()
        opened.append(db)
        clock = Clock()
        documents = DocumentWorkers(config)
        pools.append(documents)
        return Inbound(
            config=config,
            db=db,
            clock=clock,
            worker=_worker(config, db, clock, documents),
            outbox=OutboxWorker(config=config, db=db, relay=create_relay(config), clock=clock),
            relay=relay_server,
            media=media,
            documents=documents,
        )

    yield start
    for pool in pools:
        await pool.stop()
    for db in opened:
        db.close()


# -- download ------------------------------------------------------------------------------------


async def test_download_sends_the_api_key_only_to_the_carrier(media: Media) -> None:
    """The carrier's own origin gets the key; a redirect to storage elsewhere does not."""
    media.files["stored.tif"] = samples.tiff(1)
    got = await download(
        f"{media.carrier_url}/media/to-storage",
        max_bytes=10**6,
        time_limit=5,
        carrier_base_url=f"{media.carrier_url}/api/v1",
        api_key=API_KEY,
        allow_private_media=True,  # "storage" is another loopback server
    )
    assert got.data == media.files["stored.tif"]
    [(first, first_auth), (second, second_auth)] = media.seen
    assert first.endswith("/media/to-storage") and first_auth == f"Bearer {API_KEY}"
    assert second.startswith("localhost:") and second_auth is None


@pytest.mark.parametrize(
    ("url_of", "limit", "reason", "permanent"),
    [
        (
            lambda m: f"{m.carrier_url}/media/big",
            1000,
            "more than inbound.max_download_bytes",
            True,
        ),
        (lambda m: f"{m.carrier_url}/media/endless", 4096, "larger than", True),
        (lambda m: "file:///etc/passwd", 1000, "non-http(s) URL", True),
        (lambda m: "ftp://example.com/fax.tif", 1000, "non-http(s) URL", True),
        (lambda m: f"{m.carrier_url}/media/missing", 1000, "HTTP 404", False),
        (lambda m: f"{m.carrier_url}/media/stalls", 1000, "longer than 0.3s", False),
        (lambda m: "http://[::1/media/fax", 1000, "not a usable URL", True),
        (lambda m: "http://127.0.0.1:99999/media/fax", 1000, "not a usable URL", True),
        (lambda m: f"{m.carrier_url}/media/to-nowhere", 1000, "not a usable URL", True),
    ],
)
async def test_download_limits(
    media: Media, url_of: Callable[[Media], str], limit: int, reason: str, permanent: bool
) -> None:
    """Size, scheme, status and time limits each end a download with a clear reason."""
    media.files["big"] = b"\0" * 5000
    with pytest.raises(DownloadError) as caught:
        await download(
            url_of(media),
            max_bytes=limit,
            time_limit=0.3,
            carrier_base_url=f"{media.carrier_url}/api/v1",
            api_key=API_KEY,
        )
    assert reason in str(caught.value)
    assert caught.value.transient is not permanent


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("15556668888", "+15556668888"),
        ("+15556668888", "+15556668888"),
        ("anonymous", "anonymous"),
        ("", "unknown"),
        ("1555\r\nBcc: victim@example.com", "unknown"),
        ("<b>bold</b>", "unknown"),
        ("1" * 16, "1" * 16),
    ],
)
def test_numbers_from_the_carrier_are_made_safe_to_show(raw: str, shown: str) -> None:
    """Caller ids become '+digits', a short plain label, or 'unknown'."""
    assert shown_number(raw) == shown


def test_a_received_tiff_of_too_many_frames_is_mailed_as_it_came() -> None:
    """A TIFF past inbound.max_pages is attached as the TIFF, not decoded into a PDF."""
    fax = InboundFax(
        id=1,
        carrier_id="in-1",
        state=InboundState.STORED,
        from_number="+15556668888",
        to_number="+12015550101",
        pages=None,
        duration=None,
        fax_time=None,
        media_url=None,
        file_path=None,
        attempts=0,
        next_attempt_at=0,
        error=None,
        created_at=0,
        updated_at=0,
    )
    data = samples.tiff_chain(20_000)
    [attached] = attachments_for(fax, data, "pdf", max_pages=250)
    assert (attached.content_type, attached.data) == ("image/tiff", data)
    [converted] = attachments_for(fax, samples.tiff(2), "pdf", max_pages=250)
    assert converted.content_type == "application/pdf"


# -- the worker ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attach_format", "expected"),
    [
        ("pdf", [("application/pdf", ".pdf")]),
        ("tiff", [("image/tiff", ".tif")]),
        ("both", [("application/pdf", ".pdf"), ("image/tiff", ".tif")]),
    ],
)
async def test_attach_format(
    start_inbound: Callable[..., Any], attach_format: str, expected: list[tuple[str, str]]
) -> None:
    """A TIFF fax is attached as PDF, as TIFF, or as both, as inbound.attach_format says."""
    inbound = await start_inbound({"inbound": {"attach_format": attach_format}})
    inbound.media.files["fax"] = samples.tiff(2)
    await inbound.announce("fax")
    await inbound.settle()
    [mail] = inbound.relay.messages
    got = [(ctype, name[-4:]) for name, ctype, _data in attachments(mail.message)]
    assert got == expected
    assert all(
        name == "fax-2024-06-19-1538-from-15556668888" + name[-4:]
        for name, _c, _d in attachments(mail.message)
    )


async def test_a_corrupt_tiff_is_still_mailed_as_it_came(start_inbound: Callable[..., Any]) -> None:
    """A TIFF that cannot be converted or previewed goes out as the TIFF, without preview."""
    inbound = await start_inbound()
    inbound.media.files["broken"] = b"II*\x00" + b"\xff" * 200
    await inbound.announce("broken")
    with capture_logs() as logs:
        await inbound.settle()
    [mail] = inbound.relay.messages
    assert [(n[-4:], c) for n, c, _d in attachments(mail.message)] == [(".tif", "image/tiff")]
    assert not [p for p in mail.message.walk() if p.get_content_type() == "image/png"]
    events = {e["event"] for e in logs}
    assert {"inbound.convert_failed", "inbound.preview_failed"} <= events


async def test_unrouted_fax_is_kept_until_a_route_exists(start_inbound: Callable[..., Any]) -> None:
    """No route and no default: logged at error level, kept stored, mailed once routed."""
    inbound = await start_inbound({"inbound": {"default_recipients": []}})
    inbound.media.files["lost"] = samples.pdf(1)
    inbound_id = await inbound.announce("lost", to="+12015550199")
    with capture_logs() as logs:
        await inbound.settle()
    assert next(e for e in logs if e["event"] == "inbound.unrouted")["log_level"] == "error"
    row = await inbound.row(inbound_id)
    assert row.state is InboundState.STORED and row.attempts == 0
    assert row.file_path is not None
    assert await asyncio.to_thread(Path(row.file_path).exists)
    assert inbound.relay.messages == []

    night = RouteConfig(recipients=("night-desk@example.com",))
    routes = {**inbound.config.inbound.routes, "+12015550199": night}
    inbound.reconfigure({"inbound": inbound.config.inbound.model_copy(update={"routes": routes})})
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    await inbound.settle()
    [mail] = inbound.relay.messages
    assert mail.rcpt_tos == ("night-desk@example.com",)


async def test_a_failing_download_is_retried_with_backoff(
    start_inbound: Callable[..., Any],
) -> None:
    """A download that fails is tried again after a backoff, not at once, and then stored."""
    inbound = await start_inbound()
    inbound.media.files["flaky"] = samples.pdf(1)
    inbound.media.failures["flaky"] = 2
    inbound_id = await inbound.announce("flaky")
    await inbound.settle()
    row = await inbound.row(inbound_id)
    assert (row.state, row.attempts) == (InboundState.ANNOUNCED, 1)
    assert "HTTP 503" in (row.error or "")
    assert row.next_attempt_at >= inbound.clock() + inbound.config.queue.min_backoff_seconds - 1
    for _ in range(2):
        inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
        await inbound.settle()
    assert len(inbound.media.seen) == 3
    assert len(inbound.relay.messages) == 1


async def test_an_unusable_media_url_does_not_stop_other_faxes(
    start_inbound: Callable[..., Any],
) -> None:
    """A media URL that cannot be parsed makes that fax dead, named; the next one is mailed."""
    inbound = await start_inbound()
    bad_id = await inbound.db.run(
        announce_inbound,
        carrier_id="in-bad-url",
        from_number=CALLER,
        to_number=ROUTED,
        pages=1,
        duration=10,
        fax_time=None,
        media_url="https://carrier.example:99999/media/fax",
        now=inbound.clock(),
    )
    inbound.media.files["fax"] = samples.pdf(1)
    await inbound.announce("fax")
    await inbound.settle()
    bad = await inbound.row(bad_id)
    assert bad.state is InboundState.DEAD
    assert "not a usable URL" in (bad.error or "")
    assert len(inbound.relay.messages) == 1


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        (lambda m: f"{m.storage_url}/media/metrics", "loopback"),
        (lambda m: f"{m.carrier_url}/media/metrics", "not a PDF or TIFF"),
    ],
)
async def test_a_link_to_a_local_service_or_a_page_is_not_mailed(
    start_inbound: Callable[..., Any], link: Callable[[Media], str], reason: str
) -> None:
    """A link inward (not the carrier's origin) or bytes that are no fax: dead at once, named,
    and nothing reaches the inbox."""
    inbound = await start_inbound()
    inbound.media.files["metrics"] = b"# HELP fax_gateway_up\nfax_gateway_up 1\n"
    inbound_id = await inbound.db.run(
        announce_inbound,
        carrier_id="in-inward",
        from_number=CALLER,
        to_number=ROUTED,
        pages=1,
        duration=10,
        fax_time=None,
        media_url=link(inbound.media),
        now=inbound.clock(),
    )
    await inbound.settle()
    row = await inbound.row(inbound_id)
    assert (row.state, row.attempts) == (InboundState.DEAD, 1)
    assert reason in (row.error or "")
    assert API_KEY not in (row.error or "")
    assert inbound.relay.messages == []


async def test_a_fax_that_kills_the_worker_is_dead_lettered_not_retried_forever(
    start_inbound: Callable[..., Any],
) -> None:
    """An attempt cut short while the document is converted counts: after queue.max_pickups
    such crashes (the crash guard) the fax is a dead letter, and the next one is not retried at
    once meanwhile."""
    inbound = await start_inbound({"queue": {"max_pickups": 2}})
    inbound.media.files["poison"] = samples.tiff(40)
    poison = await inbound.announce("poison")

    async def crash_while_composing(attempt: int) -> None:
        running = asyncio.ensure_future(inbound.worker.run_once())

        async def composing() -> bool:
            row = await inbound.row(poison)
            # The mail step's claim (state stored), not the download's, which counts too.
            composing = row.state is InboundState.STORED and row.attempts == attempt
            return composing or row.state in (InboundState.MAILED, InboundState.DEAD)

        await until(composing)
        running.cancel()  # what a decoder crash or an OOM kill does to the process
        with contextlib.suppress(asyncio.CancelledError):
            await running

    await crash_while_composing(1)
    row = await inbound.row(poison)
    assert (row.state, row.attempts) == (InboundState.STORED, 1)
    assert row.next_attempt_at > inbound.clock()
    assert await inbound.worker.run_once() == 0  # not at once after the restart
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    await crash_while_composing(2)
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    inbound.media.files["fine"] = samples.pdf(1)
    await inbound.announce("fine")
    await inbound.settle()
    row = await inbound.row(poison)
    assert row.state is InboundState.DEAD and "interrupted" in (row.error or "")
    assert len(inbound.relay.messages) == 1


async def test_download_gives_up_after_max_attempts_and_can_be_requeued(
    start_inbound: Callable[..., Any],
) -> None:
    """After inbound.max_attempts failed downloads the fax is dead; requeue fetches again."""
    inbound = await start_inbound({"inbound": {"max_attempts": 2}})
    inbound.media.failures["gone"] = 2
    inbound_id = await inbound.announce("gone")
    await inbound.settle()
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    with capture_logs() as logs:
        await inbound.settle()
    assert "inbound.download_gave_up" in [e["event"] for e in logs if e["log_level"] == "error"]
    [dead] = await inbound.db.run(list_dead_letters)
    assert (dead.id, dead.file_path) == (inbound_id, None)

    inbound.media.files["gone"] = samples.pdf(1)
    state = await inbound.db.run(requeue_dead_letter, inbound_id)
    assert state is InboundState.ANNOUNCED
    await inbound.settle()
    assert len(inbound.relay.messages) == 1


async def test_relay_failing_dead_letters_the_fax_and_keeps_the_file(
    start_inbound: Callable[..., Any],
) -> None:
    """After inbound.max_attempts relay failures the file moves to dead-letter/, logged as an
    error; a requeue once the relay is back delivers it once."""
    inbound = await start_inbound({"inbound": {"max_attempts": 2}})
    inbound.relay.go_down()
    inbound.media.files["fax"] = samples.tiff(1)
    inbound_id = await inbound.announce("fax")
    await inbound.settle()
    assert (await inbound.row(inbound_id)).state is InboundState.MAILED
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    with capture_logs() as logs:
        await inbound.settle()
    [line] = [e for e in logs if e["event"] == "inbound.dead_letter"]
    assert line["log_level"] == "error"

    row = await inbound.row(inbound_id)
    assert row.state is InboundState.DEAD
    assert row.file_path is not None
    kept = Path(row.file_path)
    assert kept.parent == inbound.config.data.dir / "dead-letter"
    assert await asyncio.to_thread(kept.read_bytes) == inbound.media.files["fax"]
    assert [d.id for d in await inbound.db.run(list_dead_letters)] == [inbound_id]
    entry = await inbound.db.run(outbox_store.get_by_key, "inbound:in-fax")
    assert entry is not None and entry.state is outbox_store.OutboxState.DEAD
    # Nothing more happens to it on its own.
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    await inbound.settle()
    assert inbound.relay.messages == []

    inbound.relay.come_up()
    assert await inbound.db.run(requeue_dead_letter, inbound_id) is InboundState.MAILED
    row = await inbound.row(inbound_id)
    assert row.file_path is not None
    assert Path(row.file_path).parent == inbound.config.data.dir / "inbound"
    await inbound.settle()
    assert len(inbound.relay.messages) == 1
    assert await inbound.db.run(list_dead_letters) == []
    assert (await inbound.row(inbound_id)).file_path is None


async def test_a_mail_whose_send_is_under_way_is_not_dead_lettered(
    start_inbound: Callable[..., Any],
) -> None:
    """Past max_attempts, a mail the outbox is sending right now is not given up: the outbox
    refuses until the send ends, and when it succeeds the fax is delivered, never dead."""
    inbound = await start_inbound({"inbound": {"max_attempts": 1}})
    inbound.media.files["fax"] = samples.pdf(1)
    inbound_id = await inbound.announce("fax")
    while (await inbound.row(inbound_id)).state is not InboundState.MAILED:
        assert await inbound.worker.run_once() > 0
    # The outbox worker starts a send: the claim counts the attempt and the crash guard's pickup.
    [sending] = await inbound.db.run(outbox_store.claim_due, inbound.clock(), 10)
    assert sending.attempts == 1
    assert await inbound.worker.run_once() == 0
    row = await inbound.row(inbound_id)
    assert row.state is InboundState.MAILED and row.file_path is not None
    # The send that was under way succeeds.
    await inbound.db.run(outbox_store.mark_sent, sending.id)
    await inbound.settle()
    row = await inbound.row(inbound_id)
    assert (row.state, row.file_path) == (InboundState.MAILED, None)
    assert await inbound.db.run(list_dead_letters) == []


async def test_requeue_refuses_what_is_not_dead(start_inbound: Callable[..., Any]) -> None:
    """requeue_dead_letter names the problem for an unknown or live fax."""
    inbound = await start_inbound()
    inbound.media.files["fax"] = samples.pdf(1)
    inbound_id = await inbound.announce("fax")
    with pytest.raises(LookupError):
        await inbound.db.run(requeue_dead_letter, 999)
    with pytest.raises(ValueError, match="announced, not dead"):
        await inbound.db.run(requeue_dead_letter, inbound_id)


async def test_the_mail_names_the_fax_and_shows_page_one(start_inbound: Callable[..., Any]) -> None:
    """Subject, body facts, attachment name and the inline preview of an inbound fax."""
    inbound = await start_inbound()
    inbound.media.files["fax"] = samples.pdf(2)
    await inbound.announce("fax", caller="anonymous")
    await inbound.settle()
    [mail] = inbound.relay.messages
    message = mail.message
    assert subject_of(message) == "Fax from anonymous, 2 pages"
    text = message.get_body(("plain",)).get_content()
    for fact in ("+1 201-555-0142", "1 min 4 s", "2024-06-19 15:38 UTC", "in-fax"):
        assert fact in text
    [(name, _ctype, _data)] = attachments(message)
    assert name == "fax-2024-06-19-1538-from-unknown.pdf"
    [png] = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert png.get_content().startswith(b"\x89PNG")


async def test_a_fax_that_cannot_be_encrypted_is_never_mailed_in_clear(
    start_inbound: Callable[..., Any], tmp_path: Path
) -> None:
    """A TIFF that cannot be made a PDF goes as a TIFF in "pdf" mode, but to a number whose
    route encrypts it is retried, then dead-lettered: no mail at all."""
    password = tmp_path / "records.pw"
    password.write_text("records-password-9\n")
    locked = {
        "recipients": ["records@example.com"],
        "attach": "encrypted-pdf",
        "password_file": str(password),
    }
    inbound = await start_inbound(
        {
            "inbound": {
                "max_attempts": 2,
                "routes": {ROUTED: locked, "+12015550143": ["desk@example.com"]},
            }
        }
    )
    broken = b"II*\x00" + b"\x00" * 64  # a TIFF by its first bytes, nothing readable after
    inbound.media.files["broken"] = broken
    inbound.media.files["clear"] = broken
    locked_id = await inbound.announce("broken")
    await inbound.announce("clear", to="+12015550143")
    await inbound.settle()
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    await inbound.settle()

    [mail] = inbound.relay.messages
    assert mail.rcpt_tos == ("desk@example.com",)
    assert [(n.endswith(".tif"), t) for n, t, _d in attachments(mail.message)] == [
        (True, "image/tiff")
    ]
    row = await inbound.row(locked_id)
    assert row.state is InboundState.DEAD and "encrypted" in (row.error or "")
