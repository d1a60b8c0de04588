"""Faxes with health data, end to end: reports and inbound faxes in their privacy modes.

Sandbox carrier -> webhook server -> workers -> capturing relay, all real (tests/harness.py).
What arrives at the relay is opened the way a recipient's reader would: pypdf and pypdfium2
(Chrome's PDF engine), with the password and without it.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
import structlog
from pypdf import PasswordType, PdfReader
from pypdf.errors import FileNotDecryptedError

from gateway import log
from gateway.config import Config
from gateway.document.convert import PDFIUM_LOCK
from tests import samples
from tests.harness import Harness, harness_config, running
from tests.helpers import (
    CALLER,
    DELIVERS,
    FROM_NUMBER,
    OTHER_FAX_LINE,
    OUR_FAX_LINE,
    Clock,
    attachments,
)
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

PASSWORD = "Records-Room-7-Password"
# Words on the pages of the documents faxed here: they must reach no log line.
SECRET_WORDS = "Diagnosis Jane Roe"

Start = Callable[[dict[str, Any]], AbstractAsyncContextManager[Harness]]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "records.pw"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def start(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> Start:
    @asynccontextmanager
    async def start(override: dict[str, Any]) -> AsyncIterator[Harness]:
        config = harness_config(make_config, sandbox, relay_server, override)
        async with running(config, Clock()) as harness:
            sandbox.set_webhook(harness.webhook_url)
            yield harness

    return start


async def _send(gateway: Harness, sandbox: Sandbox, sender: str, pages: int = 2) -> str:
    """An outbound fax of a document with SECRET_WORDS on it, delivered and settled."""
    job, fax = await gateway.submit(DELIVERS, sender=sender, pages=pages)
    assert job.document_path is not None
    job.document_path.write_bytes(samples.pdf(pages, label=SECRET_WORDS))
    await _answered(sandbox, fax.carrier_id or "")
    await gateway.settle()
    return job.id


async def _receive(gateway: Harness, sandbox: Sandbox, to: str, data: bytes) -> str:
    created = sandbox.inbound(to, CALLER, data)
    await _answered(sandbox, created["id"])
    await gateway.settle()
    return str(created["id"])


async def _answered(sandbox: Sandbox, carrier_id: str) -> None:
    def answered() -> bool:
        return any(h["response_status"] == 200 for h in sandbox.webhooks(carrier_id))

    await sandbox.wait_for_async(answered, what=f"a webhook for {carrier_id} answered 200")


def _mail_to(relay: CapturingRelay, address: str) -> EmailMessage:
    [message] = [m.message for m in relay.messages if address in m.rcpt_tos]
    return message


def _images(message: EmailMessage) -> list[str]:
    return [p.get_content_type() for p in message.walk() if p.get_content_maintype() == "image"]


def _assert_locked(data: bytes, pages: int) -> str:
    """`data` is an AES-256 R6 PDF that opens with PASSWORD only; returns its text."""
    assert data.startswith(b"%PDF-2.0")
    reader = PdfReader(io.BytesIO(data))
    assert reader.is_encrypted
    encryption = reader.trailer["/Encrypt"].get_object()
    assert (encryption["/V"], encryption["/R"]) == (5, 6)
    assert encryption["/CF"]["/StdCF"]["/CFM"] == "/AESV3"
    with pytest.raises(FileNotDecryptedError):
        reader.pages[0].extract_text()
    assert reader.decrypt("not the password") == PasswordType.NOT_DECRYPTED
    assert reader.decrypt(PASSWORD) != PasswordType.NOT_DECRYPTED
    assert len(reader.pages) == pages
    text = " ".join(page.extract_text() for page in reader.pages)
    # Chrome's engine agrees: nothing without the password, every page with it.
    with PDFIUM_LOCK:
        with pytest.raises(pdfium.PdfiumError, match="password"):
            pdfium.PdfDocument(data)
        document = pdfium.PdfDocument(data, password=PASSWORD)
        try:
            assert len(document) == pages
        finally:
            document.close()
    return text


# -- encrypted-pdf -----------------------------------------------------------------------------


async def test_a_senders_reports_come_encrypted_and_open_with_the_password_only(
    start: Start, sandbox: Sandbox, relay_server: CapturingRelay, password_file: Path
) -> None:
    """[senders."x"] attach = "encrypted-pdf": document and transmission report are AES-256
    PDFs that open with the password and not without; another sender's come in clear."""
    override = {
        "senders": {
            "alice@example.com": {
                "from_number": FROM_NUMBER,
                "attach": "encrypted-pdf",
                "password_file": str(password_file),
            }
        }
    }
    async with start(override) as gateway:
        await _send(gateway, sandbox, "alice@example.com")
        await _send(gateway, sandbox, "bob@example.com")

    locked = _mail_to(relay_server, "alice@example.com")
    names = [name for name, _t, _d in attachments(locked)]
    assert names == ["fax-to-12015550123.pdf", "transmission-report-12015550123.pdf"]
    document, report = (data for _n, _t, data in attachments(locked))
    assert f"{SECRET_WORDS} 1 of 2" in _assert_locked(document, pages=2)
    assert "TRANSMISSION VERIFICATION REPORT" in _assert_locked(report, pages=1)
    text = locked.get_body(("plain",)).get_content()
    assert "encrypted" in text and "password your administrator gave you" in text
    raw = b"".join(m.data for m in relay_server.messages)
    assert PASSWORD.encode() not in raw

    clear = _mail_to(relay_server, "bob@example.com")
    for _name, _type, data in attachments(clear):
        assert not PdfReader(io.BytesIO(data)).is_encrypted


async def test_an_inbound_route_in_table_form_encrypts_and_the_list_form_still_works(
    start: Start, sandbox: Sandbox, relay_server: CapturingRelay, password_file: Path
) -> None:
    """A route table with attach = "encrypted-pdf" mails the TIFF as a locked PDF without a
    preview; a route in the old list form beside it mails a clear PDF with its preview."""
    override = {
        "inbound": {
            "routes": {
                OUR_FAX_LINE: {
                    "recipients": ["records@example.com"],
                    "attach": "encrypted-pdf",
                    "password_file": str(password_file),
                },
                OTHER_FAX_LINE: ["front-desk@example.com"],
            }
        }
    }
    async with start(override) as gateway:
        await _receive(gateway, sandbox, OUR_FAX_LINE, samples.tiff(2))
        await _receive(gateway, sandbox, OTHER_FAX_LINE, samples.pdf(1))

    locked = _mail_to(relay_server, "records@example.com")
    [(name, content_type, data)] = attachments(locked)
    assert name.endswith("-from-15556668888.pdf") and content_type == "application/pdf"
    _assert_locked(data, pages=2)
    assert _images(locked) == []  # no page-1 picture in clear beside the locked file
    assert "encrypted" in locked.get_body(("plain",)).get_content()
    assert PASSWORD.encode() not in b"".join(m.data for m in relay_server.messages)

    clear = _mail_to(relay_server, "front-desk@example.com")
    [(_name, _type, data)] = attachments(clear)
    assert not PdfReader(io.BytesIO(data)).is_encrypted
    assert _images(clear) == ["image/png"]


# -- none --------------------------------------------------------------------------------------


async def test_attach_none_mails_say_what_happened_and_carry_no_document(
    start: Start, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """attach = "none": the report and the inbound mail give number, pages and time and say
    to ask the administrator; no document, no preview, and the transmission report carries
    no picture of page 1."""
    override = {"notify": {"attach": "none"}, "inbound": {"attach": "none"}}
    async with start(override) as gateway:
        job_id = await _send(gateway, sandbox, "alice@example.com", pages=3)
        carrier_id = await _receive(gateway, sandbox, OUR_FAX_LINE, samples.tiff(2))

    report = _mail_to(relay_server, "alice@example.com")
    [(name, _type, data)] = attachments(report)
    assert name == "transmission-report-12015550123.pdf"
    reader = PdfReader(io.BytesIO(data))
    assert list(reader.pages[0].images) == []
    sheet = " ".join(reader.pages[0].extract_text().split())
    assert "TO FAX NO. +1 201-555-0123" in sheet and "Page 1 is not shown" in sheet
    assert SECRET_WORDS not in sheet
    text = report.get_body(("plain",)).get_content()
    for fact in ("+1 201-555-0123", "Pages:", "Delivered at:", "ask your administrator", job_id):
        assert fact in text, fact
    assert "document that was faxed is attached" not in text

    inbound = _mail_to(relay_server, "fax-desk@example.com")
    assert attachments(inbound) == []
    assert _images(inbound) == []
    text = inbound.get_body(("plain",)).get_content()
    for fact in ("+1 555-666-8888", "Pages:        2", "Received at:", "ask your administrator"):
        assert fact in text, fact
    assert carrier_id in text
    assert b"%PDF" not in b"".join(m.data for m in relay_server.messages)


# -- logs --------------------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line of the test, as the daemon writes them (JSON, debug level)."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    log.configure("debug", stream=stream, json=True)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_no_password_and_no_document_content_in_any_log_line(
    start: Start,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    password_file: Path,
    log_lines: io.StringIO,
) -> None:
    """An encrypted report, an encrypted inbound fax and a clear one with its preview: the
    captured log has neither the password nor a word or byte of any document."""
    locked = {"attach": "encrypted-pdf", "password_file": str(password_file)}
    override = {
        "notify": locked,
        "inbound": {"routes": {OUR_FAX_LINE: {"recipients": ["records@example.com"], **locked}}},
    }
    async with start(override) as gateway:
        await _send(gateway, sandbox, "alice@example.com")
        await _receive(gateway, sandbox, OUR_FAX_LINE, samples.pdf(2, label=SECRET_WORDS))
        await _receive(gateway, sandbox, OTHER_FAX_LINE, samples.pdf(1, label=SECRET_WORDS))

    text = log_lines.getvalue()
    events = {json.loads(line)["event"] for line in text.splitlines() if line.strip()}
    assert {"report.queued", "inbound.stored", "inbound.mailed", "outbox.sent"} <= events
    assert len(relay_server.messages) == 3
    for line in text.splitlines():
        assert PASSWORD not in line
        for word in SECRET_WORDS.split():
            assert word not in line, line
        assert "%PDF" not in line and "endstream" not in line, line
