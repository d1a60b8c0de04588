"""Sending from a copier, end to end: the shared address, address options and per-sender cover
pages through a whole gateway (real SMTP in, the sandbox carrier, reports and explanations at
the capturing relay)."""

from __future__ import annotations

import asyncio
import io
import smtplib
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from gateway.daemon import Gateway
from gateway.store import jobs
from tests import samples
from tests.helpers import subject_of, until
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

COPIER = "copier@example.com"
SHARED = {"smtp": {"subject_address": "fax", "allowed_senders": ["*@example.com"]}}


def scan(to: str, subject: str, document: bytes) -> EmailMessage:
    message = EmailMessage()
    message["From"] = COPIER
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<scan-1@copier.example.com>"
    message.set_content("Scanned on the 2nd floor.")
    message.add_attachment(document, "application", "pdf", filename="scan.pdf")
    return message


async def send(gw: Gateway, message: EmailMessage) -> tuple[int, str]:
    """The DATA reply (code, text) the gateway's SMTP server gives `message` (smtplib, in a
    thread: it returns refusals instead of raising them)."""

    def go() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gw.smtp.port, timeout=30) as client:
            client.ehlo("copier.example.com")
            assert client.mail(COPIER)[0] == 250
            assert client.rcpt(str(message["To"]))[0] == 250
            return client.data(message.as_bytes(policy=policy.SMTP))

    code, text = await asyncio.to_thread(go)
    return code, text.decode()


async def outbound(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    def final() -> list[dict[str, Any]]:
        faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
        done = [f for f in faxes if f["status"] in ("delivered", "failed")]
        return done if len(done) >= count else []

    return await sandbox.wait_for_async(final, timeout=20, what=f"{count} final faxes")


def pages(document: bytes) -> int:
    return len(PdfReader(io.BytesIO(document)).pages)


async def reported(gw: Gateway, job_id: str) -> bool:
    """Every fax of the job is final and its report decided (sent or not wanted)."""

    def query(conn: Any) -> bool:
        rows = conn.execute("SELECT reported_at FROM faxes WHERE job_id = ?", (job_id,)).fetchall()
        return bool(rows) and all(row[0] is not None for row in rows)

    return bool(await gw.db.run(query))


async def test_a_copier_faxes_to_the_numbers_of_its_subject(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Mail to fax@ with two numbers in its Subject is faxed to both, as it is; each report's
    subject is what followed the numbers."""
    document = samples.pdf(2)
    async with gateway(SHARED) as gw:
        code, text = await send(
            gw, scan("fax@fax.local", "fax: 12015550123, 12015550124 Quarterly report", document)
        )
        assert code == 250, text
        faxes = await outbound(sandbox, 2)
        assert sorted(f["to"] for f in faxes) == ["12015550123", "12015550124"]
        assert all(sandbox.document(f["id"]) == document for f in faxes)
        reports = await relay_server.wait_for(2, timeout=20)
        for report in reports:
            assert list(report.rcpt_tos) == [COPIER]
            assert subject_of(report.message).endswith("(Re: Quarterly report)")


async def test_a_refused_copier_mail_is_explained_at_the_relay(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A blocked number in the Subject refuses the whole mail (554) and the copier's sender
    gets the explanation through the outbox and the relay; nothing is faxed."""
    async with gateway(SHARED) as gw:
        code, text = await send(
            gw, scan("fax@fax.local", "12015550123 19005550123 Invoice", samples.pdf(1))
        )
        assert code == 554 and "19005550123" in text, text
        [mail] = await relay_server.wait_for(1, timeout=20)
        assert list(mail.rcpt_tos) == [COPIER]
        assert subject_of(mail.message) == "Fax not sent (Re: 12015550123 19005550123 Invoice)"
        assert mail.message["In-Reply-To"] == "<scan-1@copier.example.com>"
        assert await gw.db.run(jobs.list_jobs) == []
    assert [f for f in sandbox.faxes() if f["direction"] == "outbound"] == []


async def test_nocover_and_cover_options_override_the_configuration(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """With covers on, `+nocover` faxes the PDF as it is; with covers off, `+cover` (also after
    the shared address) adds a cover page."""
    document = samples.pdf(2)
    async with gateway({**SHARED, "cover": {"enabled": True}}) as gw:
        code, _ = await send(gw, scan("12015550123+nocover@fax.local", "Hi", document))
        assert code == 250
        [fax] = await outbound(sandbox, 1)
        assert sandbox.document(fax["id"]) == document
        await relay_server.wait_for(1, timeout=20)
    async with gateway({**SHARED, "cover": {"enabled": False}}) as gw:
        code, _ = await send(gw, scan("fax+cover@fax.local", "12015550124 Hi", document))
        assert code == 250
        faxes = await outbound(sandbox, 2)
        [covered] = [f for f in faxes if f["to"] == "12015550124"]
        assert pages(sandbox.document(covered["id"])) == 3


async def test_a_senders_own_cover_template(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay, tmp_path: Path
) -> None:
    """[senders."addr"] cover = true with its cover_template puts that template's cover on the
    sender's faxes (two pages here), from its own from_number; `+nocover` still wins."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "cover-legal.txt.j2").write_text(
        "LEGAL\n{{ page_break }}Privileged and confidential: {{ subject }}\n"
    )
    settings = {
        "templates": {"dir": str(templates)},
        "senders": {
            COPIER: {
                "cover": True,
                "cover_template": "cover-legal.txt.j2",
                "from_number": "+12015550199",
            }
        },
    }
    document = samples.pdf(1)
    async with gateway(settings) as gw:
        code, _ = await send(gw, scan("12015550123@fax.local", "Contract", document))
        assert code == 250
        [fax] = await outbound(sandbox, 1)
        assert pages(sandbox.document(fax["id"])) == 3
        assert fax["from"] == "12015550199"
        await relay_server.wait_for(1, timeout=20)
        code, _ = await send(gw, scan("12015550124+nocover@fax.local", "Contract", document))
        assert code == 250
        faxes = await outbound(sandbox, 2)
        [plain] = [f for f in faxes if f["to"] == "12015550124"]
        assert sandbox.document(plain["id"]) == document


async def test_notify_options_choose_the_reports(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """`+notify=none` sends no report at all; `+notify=failure` reports a failed fax only."""
    async with gateway() as gw:
        code, text = await send(
            gw, scan("12015550123+notify=none@fax.local", "Quiet", samples.pdf(1))
        )
        assert code == 250
        quiet = text.rsplit(" ", 1)[1]
        code, text = await send(
            gw, scan("12015550124+notify=failure@fax.local", "Delivered", samples.pdf(1))
        )
        delivered = text.rsplit(" ", 1)[1]
        code, _ = await send(
            gw, scan("12015550166+notify=failure@fax.local", "Busy", samples.pdf(1))
        )
        assert code == 250
        await outbound(sandbox, 3)
        await until(lambda: reported(gw, quiet), 20)
        await until(lambda: reported(gw, delivered), 20)
        [report] = await relay_server.wait_for(1, timeout=20)
        assert subject_of(report.message).startswith("Fax to +1 201-555-0166 failed")
    assert len(relay_server.messages) == 1
