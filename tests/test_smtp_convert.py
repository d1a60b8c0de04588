"""Office and text attachments through SMTP: converted before the 250 (or refused naming the
file), the PDFs spooled with the message, and faxed as PDF to the sandbox carrier."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from gateway.cli import UserError
from gateway.commands.send import pipeline_send
from gateway.config import Address, Config
from tests import office_files, samples
from tests.conftest import run_cli
from tests.office_files import needs_libreoffice
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.smtp import running_smtp
from tests.test_email_to_fax import fax_mail, fetch, outbound, send
from tests.test_smtp_server import asend

CONVERT = {"documents": {"convert_office": True}}
MISSING = {"documents": {"convert_office": True, "libreoffice": "/nonexistent/soffice"}}


def pages(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages)


def words(pdf: bytes) -> str:
    return " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


@pytest.fixture
def smtp(make_config: Callable[..., Config]) -> Callable[..., Any]:
    def start(override: dict[str, Any] | None = None) -> Any:
        return running_smtp(make_config(override))

    return start


async def test_text_attachment_is_accepted_without_libreoffice(smtp: Callable[..., Any]) -> None:
    """A .txt attachment is faxable with conversion off: 250, its pages counted, nothing spooled
    beside the message (text is drawn again when the document is built)."""
    message = samples.mail(
        samples.part("Line one\nLine two\n" * 80, "text/plain", filename="notes.txt")
    )
    async with smtp() as gw:
        outcome = await asend(gw.port, message)
        [job] = await gw.jobs()
    assert job["id"] == outcome.job_id
    assert [p.name for p in gw.spool.root.iterdir()] == [f"{job['id']}.eml"]


@needs_libreoffice
async def test_word_file_is_converted_before_250_and_spooled(smtp: Callable[..., Any]) -> None:
    """With convert_office a Word file is accepted, and the PDF LibreOffice made of it is kept
    in the spool beside the message for the prepare worker."""
    message = samples.mail(
        samples.attachment(samples.pdf(2), "first.pdf"),
        samples.attachment(office_files.docx(), "report.docx", office_files.DOCX),
    )
    async with smtp(CONVERT) as gw:
        outcome = await asend(gw.port, message)
        job_id = outcome.job_id
        kept = gw.spool.read_converted(gw.spool.path_for(job_id))
    assert list(kept) == [1]
    assert "Quarterly report" in words(kept[1])


@needs_libreoffice
async def test_unconvertible_file_is_refused_naming_it(smtp: Callable[..., Any]) -> None:
    """A file LibreOffice cannot read is refused at DATA with 554 5.6.0 naming it; no job."""
    message = samples.mail(samples.attachment(samples.docx(), "Budget Q3.docx", office_files.DOCX))
    async with smtp(CONVERT) as gw:
        outcome = await asend(gw.port, message)
        assert await gw.jobs() == []
        assert not gw.spool.root.exists() or list(gw.spool.root.iterdir()) == []
    assert outcome.data is not None
    code, text = outcome.data
    assert code == 554
    assert text == "5.6.0 Budget Q3.docx: LibreOffice could not convert this Word file to PDF"


async def test_missing_libreoffice_refuses_naming_the_converter(smtp: Callable[..., Any]) -> None:
    """Conversion on but LibreOffice absent: the office file is refused naming the converter,
    not crashed on; a PDF mail still goes through."""
    message = samples.mail(samples.attachment(office_files.docx(), "report.docx"))
    async with smtp(MISSING) as gw:
        refused = await asend(gw.port, message)
        accepted = await asend(gw.port, samples.mail(samples.attachment(samples.pdf(1), "a.pdf")))
    assert refused.data is not None
    code, text = refused.data
    assert code == 554
    assert text.startswith("5.6.0 report.docx cannot be converted: the converter LibreOffice")
    assert accepted.job_id


async def test_more_office_files_than_the_limit_are_refused_naming_it(
    smtp: Callable[..., Any],
) -> None:
    """A message with more office files than documents.max_office_files is refused with
    554 5.6.0 naming the limit, before LibreOffice runs for any (none is installed here)."""
    settings = {"documents": {**MISSING["documents"], "max_office_files": 2}}
    files = [
        samples.attachment(office_files.docx(), f"part{n}.docx", office_files.DOCX)
        for n in range(3)
    ]
    async with smtp(settings) as gw:
        outcome = await asend(gw.port, samples.mail(*files))
        assert await gw.jobs() == []
    assert outcome.data == (
        554,
        "5.6.0 the message has 3 office files; at most 2 are converted per message"
        " (documents.max_office_files)",
    )


async def test_office_file_is_unsupported_when_conversion_is_off(
    smtp: Callable[..., Any],
) -> None:
    """By default (convert_office off) an office file is named as not faxable, as before."""
    message = samples.mail(samples.attachment(office_files.docx(), "report.docx"))
    async with smtp() as gw:
        outcome = await asend(gw.port, message)
    assert outcome.data is not None
    assert outcome.data[0] == 554
    assert "report.docx cannot be faxed" in outcome.data[1]


@needs_libreoffice
async def test_word_and_text_files_reach_the_carrier_as_one_pdf(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """End to end: a .docx and a .txt are faxed as one two-page PDF, and reported."""
    async with gateway(CONVERT) as gw:
        await send(
            gw,
            fax_mail(
                "12015550123@fax.local",
                (office_files.docx(), office_files.DOCX, "report.docx"),
                (b"Plain notes for the fax\n", "text/plain", "notes.txt"),
            ),
        )
        [fax] = await outbound(sandbox, 1)
        document = sandbox.document(fax["id"])
        assert document.startswith(b"%PDF-")
        # The Word page keeps its text; the text file's page is drawn (an image, like a fax).
        reader = PdfReader(io.BytesIO(document))
        assert "Quarterly report" in reader.pages[0].extract_text()
        assert len(reader.pages[1].images) == 1
        assert int(fax["pages"]) == pages(document) == 2
        [report] = await relay_server.wait_for(1, timeout=20)
        assert "delivered" in str(report.message["Subject"])


async def test_readyz_and_check_config_name_a_missing_converter(
    gateway: GatewayFactory,
    config_data: dict[str, Any],
    write_config: Callable[..., Path],
) -> None:
    """Conversion on without LibreOffice: /readyz is not ready and names the converter, and
    check-config exits 2 saying so."""
    async with gateway(MISSING) as gw:
        status, body, _ = await fetch(f"{gw.config.http.public_url}/readyz")
    checks = json.loads(body)["checks"]
    assert status == 503
    assert checks["converter"].startswith(
        "documents.convert_office is on, but the converter LibreOffice ('/nonexistent/soffice')"
    )
    path = write_config({**config_data, **MISSING})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "documents.convert_office is on, but the converter LibreOffice" in result.stderr


@needs_libreoffice
async def test_no_free_conversion_slot_answers_451(smtp: Callable[..., Any]) -> None:
    """With every LibreOffice slot taken for the whole timeout, DATA answers 451 4.3.2 (the
    client tries again later) and nothing is queued."""
    settings = {"documents": {"convert_office": True, "convert_timeout_seconds": 0.3}}
    message = samples.mail(samples.attachment(office_files.docx(), "report.docx"))
    async with smtp(settings) as gw:
        handler = gw.server.handler
        assert handler is not None
        slots = handler.office._slots  # taken as if conversions were running
        for _ in range(gw.server.config.documents.max_concurrent_conversions):
            assert slots.acquire(blocking=False)
        outcome = await asend(gw.port, message)
        assert await gw.jobs() == []
    assert outcome.data is not None
    assert outcome.data[0] == 451
    assert outcome.data[1].startswith("4.3.2 ")


async def test_send_command_faxes_a_text_file_and_names_the_office_switch(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """`fax-gateway send notes.txt` is queued like a mail with it attached; a .docx with
    conversion off is refused before anything is sent, naming documents.convert_office."""
    config = make_config()
    notes = tmp_path / "notes.txt"
    notes.write_text("Call me back\n")
    report = tmp_path / "report.docx"
    report.write_bytes(office_files.docx())
    async with running_smtp(config) as gw:
        listen = config.smtp.model_copy(update={"listen": Address("127.0.0.1", gw.port)})
        pointed = config.model_copy(update={"smtp": listen})
        job_id = await asyncio.to_thread(
            pipeline_send, pointed, "+12015550123", notes, "alice@example.com", ""
        )
        assert [job["id"] for job in await gw.jobs()] == [job_id]
        with pytest.raises(UserError) as caught:
            pipeline_send(pointed, "+12015550123", report, "alice@example.com", "")
        assert "documents.convert_office = true" in str(caught.value)
        assert len(await gw.jobs()) == 1
