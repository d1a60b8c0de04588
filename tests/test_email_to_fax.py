"""Email to fax end to end: real SMTP in, the sandbox carrier, storage, reports at the relay."""

from __future__ import annotations

import asyncio
import io
import smtplib
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from pypdf import PdfReader

from gateway.daemon import Gateway
from gateway.store import jobs
from gateway.store.records import JobState
from tests import samples
from tests.helpers import until
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

# The whole daemon, once on each store backend (PostgreSQL: one node).
pytestmark = pytest.mark.usefixtures("store_backend")


def fax_mail(
    to: str | list[str], *attachments: tuple[bytes, str, str], subject: str = "Hi"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = to if isinstance(to, str) else ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = "<original-123@example.com>"
    message.set_content("Please see the attached document.")
    for data, content_type, filename in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype, subtype, filename=filename)
    return message


async def send(gw: Gateway, message: EmailMessage) -> str:
    """Send through the gateway's SMTP server; returns the queued job id from the reply."""
    errors, reply = await aiosmtplib.send(message, hostname="127.0.0.1", port=gw.smtp.port)
    assert not errors
    assert reply.startswith("2.0.0 queued as "), reply
    return reply.rsplit(" ", 1)[1]


async def fetch(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), response.content_type


async def cleaned(gw: Gateway, job_id: str) -> bool:
    job = await gw.db.run(jobs.get_job, job_id)
    return job is not None and job.stored_deleted_at is not None


async def outbound(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    def final() -> list[dict[str, Any]]:
        faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
        done = [f for f in faxes if f["status"] in ("delivered", "failed")]
        return done if len(done) >= count else []

    return await sandbox.wait_for_async(final, timeout=20, what=f"{count} final faxes")


async def test_single_pdf_is_faxed_as_is_and_reported(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A PDF mailed to a number reaches the carrier byte for byte; a delivery report comes back."""
    document = samples.pdf(2)
    async with gateway() as gw:
        job_id = await send(
            gw, fax_mail("12015550123@fax.local", (document, "application/pdf", "a.pdf"))
        )
        [fax] = await outbound(sandbox, 1)
        assert fax["to"] == "12015550123"
        assert fax["from"] == "12015550100"
        assert sandbox.document(fax["id"]) == document
        [report] = await relay_server.wait_for(1, timeout=20)
        message = report.message
        assert (
            str(message["Subject"]).strip().startswith("Fax to +1 201-555-0123 delivered, 2 pages")
        )
        assert message["In-Reply-To"] == "<original-123@example.com>"
        assert list(report.rcpt_tos) == ["alice@example.com"]
        attached = [p.get_filename() for p in message.iter_attachments()]
        assert any(name and name.endswith(".pdf") for name in attached)
        job = await gw.db.run(jobs.get_job, job_id)
        assert job is not None and job.state == JobState.DONE
        # Once the fax is final the document is gone from storage: the URL answers 404.
        await until(lambda: cleaned(gw, job_id))
        status, _, _ = await fetch(fax["url"])
        assert status == 404


async def test_pdf_and_png_are_merged_with_pages_counted(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A PDF and a PNG become one PDF in message order, with the page count the carrier sees."""
    async with gateway() as gw:
        await send(
            gw,
            fax_mail(
                "12015550123@fax.local",
                (samples.pdf(3), "application/pdf", "first.pdf"),
                (samples.png(), "image/png", "second.png"),
            ),
        )
        [fax] = await outbound(sandbox, 1)
        merged = sandbox.document(fax["id"])
        assert len(PdfReader(io.BytesIO(merged)).pages) == 4
        assert int(fax["pages"]) == 4
        await relay_server.wait_for(1, timeout=20)


async def test_two_recipients_one_failing(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """One message to two numbers is two faxes; each outcome is reported, the failure with why."""
    async with gateway() as gw:
        message = fax_mail(
            ["12015550123@fax.local", "12015550166@fax.local"],
            (samples.pdf(1), "application/pdf", "a.pdf"),
        )
        await send(gw, message)
        await outbound(sandbox, 2)
        reports = await relay_server.wait_for(2, timeout=20)
        # Python folds a long Subject right after the colon; unfolding leaves a leading space.
        subjects = sorted(str(r.message["Subject"]).strip() for r in reports)
        assert subjects[0].startswith("Fax to +1 201-555-0123 delivered")
        assert subjects[1].startswith(
            "Fax to +1 201-555-0166 failed: far end is not able to receive"
        )


async def test_carrier_500_is_retried_and_sent_once(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """POST /faxes answering 500 is retried; exactly one fax exists at the carrier in the end."""
    sandbox.fail_next(4, status=500, method="POST", path="/api/v1/faxes")
    async with gateway() as gw:
        await send(
            gw, fax_mail("12015550123@fax.local", (samples.pdf(1), "application/pdf", "a.pdf"))
        )
        await outbound(sandbox, 1)
        await relay_server.wait_for(1, timeout=20)
        assert len([f for f in sandbox.faxes() if f["direction"] == "outbound"]) == 1


async def test_carrier_422_fails_the_fax_with_its_message(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A 422 from the carrier is not retried: the sender gets a failure report with its words."""
    sandbox.fail_next(1, status=422, method="POST", path="/api/v1/faxes")
    async with gateway() as gw:
        await send(
            gw, fax_mail("12015550123@fax.local", (samples.pdf(1), "application/pdf", "a.pdf"))
        )
        [report] = await relay_server.wait_for(1, timeout=20)
        assert "failed" in str(report.message["Subject"])
        posts = sandbox.requests(path="/api/v1/faxes", method="POST")
        assert len(posts) == 1


async def test_s3_storage_serves_the_document_by_presigned_url(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    s3_server: Any,
    s3_env: Any,
) -> None:
    """With S3 storage the carrier fetches the document from the bucket by a presigned URL."""
    document = samples.pdf(1)
    async with gateway(s3_server.config_overrides()) as gw:
        await send(gw, fax_mail("12015550123@fax.local", (document, "application/pdf", "a.pdf")))
        [fax] = await outbound(sandbox, 1)
        assert fax["url"].startswith(s3_server.endpoint_url)
        assert "X-Amz-Signature=" in fax["url"]
        assert sandbox.document(fax["id"]) == document
        await relay_server.wait_for(1, timeout=20)


async def test_metrics_and_readiness_after_a_fax(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """/readyz is ready with everything up, and /metrics counts the delivered fax."""
    async with gateway() as gw:
        await send(
            gw, fax_mail("12015550123@fax.local", (samples.pdf(1), "application/pdf", "a.pdf"))
        )
        await relay_server.wait_for(1, timeout=20)
        base = gw.config.http.public_url
        status, body, _ = await fetch(f"{base}/readyz")
        assert status == 200, body
        status, body, _ = await fetch(f"{base}/metrics")
        text = body.decode()
        assert status == 200
        assert 'faxgw_faxes_total{error_code="",status="delivered"} 1.0' in text
        assert "faxgw_smtp_messages_accepted_total 1.0" in text
        assert "faxgw_fax_received_to_submitted_seconds_count 1.0" in text


async def test_readyz_reports_a_stopped_s3(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay, s3_env: Any
) -> None:
    """With S3 unreachable the gateway still starts, accepts mail, and /readyz names storage."""
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    overrides = {"storage": {"backend": "s3", "bucket": "faxes", "endpoint_url": dead}}
    async with gateway(overrides) as gw:
        job_id = await send(
            gw, fax_mail("12015550123@fax.local", (samples.pdf(1), "application/pdf", "a.pdf"))
        )
        status, body, _ = await fetch(f"{gw.config.http.public_url}/readyz")
        assert status == 503
        assert b'"storage"' in body
        assert b'"store": "ok"' in body or b'"store":"ok"' in body
        job = await gw.db.run(jobs.get_job, job_id)
        assert job is not None and job.state in (JobState.RECEIVED, JobState.PREPARED)


def test_smtplib_client_gets_queued_reply(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A plain smtplib client (as any script would use) gets '250 2.0.0 queued as <id>'."""

    async def scenario() -> None:
        async with gateway() as gw:
            message = fax_mail("12015550123@fax.local", (samples.jpeg(), "image/jpeg", "photo.jpg"))

            def deliver() -> tuple[int, bytes]:
                with smtplib.SMTP("127.0.0.1", gw.smtp.port) as client:
                    client.send_message(message)
                    return client.noop()

            code, _ = await asyncio.to_thread(deliver)
            assert code == 250
            await outbound(sandbox, 1)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("data", "content_type", "filename", "pages"),
    [
        (samples.png(), "image/png", "scan.png", 1),
        (samples.jpeg(), "image/jpeg", "photo.jpg", 1),
        (samples.tiff(pages=3), "image/tiff", "fax.tif", 3),
    ],
)
async def test_single_image_is_faxed_as_is(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    data: bytes,
    content_type: str,
    filename: str,
    pages: int,
) -> None:
    """A lone PNG, JPEG or multi-page TIFF reaches the carrier unchanged, its pages counted."""
    async with gateway() as gw:
        await send(gw, fax_mail("12015550123@fax.local", (data, content_type, filename)))
        [fax] = await outbound(sandbox, 1)
        assert sandbox.document(fax["id"]) == data
        assert int(fax["pages"]) == pages
        [report] = await relay_server.wait_for(1, timeout=20)
        assert f"delivered, {pages} page" in str(report.message["Subject"])


async def test_national_number_and_non_ascii_names(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A national number and a non-ASCII subject and file name go through; the report keeps them."""
    async with gateway() as gw:
        message = fax_mail(
            "(201) 555-0123 <2015550123@fax.local>",
            (samples.pdf(1), "application/pdf", "Überweisung März.pdf"),
            subject="Rechnung für Müller",
        )
        await send(gw, message)
        [fax] = await outbound(sandbox, 1)
        assert fax["to"] == "12015550123"
        [report] = await relay_server.wait_for(1, timeout=20)
        assert "Rechnung für Müller" in str(report.message["Subject"])


async def test_reload_reaches_every_running_part(gateway: GatewayFactory) -> None:
    """A reloaded configuration reaches every worker, the reporter and the webhook endpoint."""
    async with gateway() as gw:
        new = gw.config.model_copy(
            update={
                "fax": gw.config.fax.model_copy(update={"max_pages": 7}),
                "webhooks": gw.config.webhooks.model_copy(update={"verify": False}),
            }
        )
        gw._reconfigure(new)
        for worker in gw.runner.workers:
            if hasattr(worker, "config"):
                assert worker.config.fax.max_pages == 7, worker.name
        assert gw.webhooks.config.webhooks.verify is False
        assert gw.reporter.config is new


async def test_library_refusals_are_counted(gateway: GatewayFactory) -> None:
    """A message refused by aiosmtpd itself (too big for SIZE) is counted by reason too."""
    async with gateway({"smtp": {"max_message_bytes": 2000}}) as gw:
        message = fax_mail("12015550123@fax.local", (samples.pdf(3), "application/pdf", "a.pdf"))
        with pytest.raises(aiosmtplib.SMTPException):
            await aiosmtplib.send(message, hostname="127.0.0.1", port=gw.smtp.port)
        _, body, _ = await fetch(f"{gw.config.http.public_url}/metrics")
        assert 'faxgw_smtp_rejected_total{reason="too_big"} 1.0' in body.decode()
