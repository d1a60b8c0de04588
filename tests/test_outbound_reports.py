"""Delivery reports: what each says, who gets it, and that it goes out once.

Jobs and faxes are made through the jobs repository and finished with the carrier's own
statuses (`record_carrier_status`), or failed before submission (`fail_fax`), as the stages
do; reports go through the real outbox to a capturing relay.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pypdfium2 as pdfium
import pytest
from PIL import ImageChops
from pypdf import PasswordType, PdfReader
from structlog.testing import capture_logs

from gateway.carrier.faxerrors import FAX_ERRORS, NOT_RETRYABLE
from gateway.carrier.status import Outcome
from gateway.config import Config
from gateway.document.convert import PDFIUM_LOCK
from gateway.document.workers import DocumentWorkers
from gateway.mailout.outbox import OutboxWorker
from gateway.mailout.relay import create_relay
from gateway.mailout.templates import MailRenderer
from gateway.outbound.reports import (
    Reporter,
    ReportsWorker,
    failure_details,
    report_fax,
    wanted,
)
from gateway.outbound.transmission import Transmission
from gateway.queue.runner import run_until_idle
from gateway.store import Database
from gateway.store.faxes import (
    begin_submit,
    fail_fax,
    faxes_of,
    get_fax,
    mark_submitted,
    record_carrier_status,
)
from gateway.store.jobs import advance, cancel_job, create_job, fail_job, get_job, retry_job
from gateway.store.outbox import list_messages
from gateway.store.records import Fax, FaxState, Job, JobState, NewJob, new_job_id
from tests import samples
from tests.helpers import attachments, subject_of
from tests.servers.relay import CapturingRelay

NUMBER = "+12015550123"


@dataclass
class Reports:
    config: Config
    db: Database
    renderer: MailRenderer
    relay: CapturingRelay
    worker: ReportsWorker
    outbox: OutboxWorker
    documents: DocumentWorkers

    async def job(
        self,
        *,
        to: str = NUMBER,
        subject: str = "Quarterly report",
        sender: str = "alice@example.com",
        submit: bool = True,
        notify: str | None = None,
    ) -> tuple[Job, Fax]:
        """A job with one fax, uploaded (and submitted with a made-up carrier id)."""
        job_id = new_job_id()
        path = self.config.data.dir / "documents" / f"{job_id}.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(samples.pdf(3))
        new = NewJob(
            id=job_id,
            sender=sender,
            auth_user=None,
            client_address=None,
            subject=subject,
            message_id="<m-1@mail.example.com>",
            from_number="+12015550100",
            spool_path=path,
            recipients=(to,),
            notify=notify,
        )
        await self.db.run(create_job, new)
        await self.db.run(
            advance,
            job_id,
            JobState.RECEIVED,
            JobState.PREPARED,
            document_path=path,
            document_type="application/pdf",
            pages=3,
        )
        await self.db.run(
            advance,
            job_id,
            JobState.PREPARED,
            JobState.UPLOADED,
            document_url=f"https://files.example/{job_id}.pdf",
        )
        [fax] = await self.db.run(faxes_of, job_id)
        if submit:
            await self.db.run(begin_submit, fax.id)
            await self.db.run(mark_submitted, fax.id, f"carrier-{job_id}", "queued")
        job = await self.db.run(get_job, job_id)
        fax = await self.db.run(get_fax, fax.id)
        assert job is not None and fax is not None
        return job, fax

    async def finish(self, fax: Fax, status: str, outcome: Outcome, code: int | None = None) -> Fax:
        result = await self.db.run(
            record_carrier_status,
            fax.carrier_id or "",
            status,
            outcome,
            3 if outcome is Outcome.SUCCEEDED else 1,
            95,
            2,
            code,
            None if code is None else FAX_ERRORS.get(code),
        )
        assert result is not None
        return result[0]

    async def settle(self) -> list[EmailMessage]:
        await run_until_idle([self.worker, self.outbox])
        return [m.message for m in self.relay.messages]


@pytest.fixture
async def start_reports(
    make_config: Callable[..., Config], relay_server: CapturingRelay
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Database] = []
    pools: list[DocumentWorkers] = []

    async def start(override: dict[str, Any] | None = None) -> Reports:
        config = make_config({"relay": relay_server.relay_config_overrides(), **(override or {})})
        db = await Database(config.data.dir / "store.db").open()
        opened.append(db)
        renderer = MailRenderer(config.templates.dir)
        outbox_dir = config.data.dir / "outbox"
        documents = DocumentWorkers(config)
        pools.append(documents)
        return Reports(
            config=config,
            db=db,
            renderer=renderer,
            relay=relay_server,
            worker=ReportsWorker(
                config=config,
                db=db,
                renderer=renderer,
                outbox_dir=outbox_dir,
                documents=documents,
            ),
            outbox=OutboxWorker(config=config, db=db, relay=create_relay(config)),
            documents=documents,
        )

    yield start
    for pool in pools:
        await pool.stop()
    for db in opened:
        db.close()


@pytest.fixture
async def reports(start_reports: Callable[..., Any]) -> AsyncIterator[Reports]:
    yield await start_reports()


@pytest.mark.parametrize("code", sorted(FAX_ERRORS))
def test_every_fax_error_code_is_described_with_retry_advice(code: int) -> None:
    """Each code of the carrier's table renders its description and our retry advice."""
    details = failure_details(_fax_with(code, "whatever the carrier wrote"))
    assert details["error_code"] == code
    assert details["error_description"] == FAX_ERRORS[code]
    assert details["retry_may_help"] is (code not in NOT_RETRYABLE)


def test_unknown_codes_and_failures_without_a_code_keep_the_carriers_words() -> None:
    """An unknown code keeps the carrier's description; no code keeps the stage's reason."""
    unknown = failure_details(_fax_with(5999, "line noise beyond repair"))
    assert unknown["error_description"] == "line noise beyond repair"
    assert unknown["retry_may_help"] is True
    no_code = failure_details(_fax_with(None, None))
    assert no_code["error_description"] == "fax failed without an error code"
    assert no_code["retry_may_help"] is True
    refused = failure_details(
        _fax_with(None, "the carrier refused the fax: invalid number", carrier_id=None)
    )
    assert refused["error_description"] == "the carrier refused the fax: invalid number"
    assert refused["retry_may_help"] is False


async def test_the_failure_report_renders_each_scripted_code(reports: Reports) -> None:
    """Failure reports for a document error, a call error and an internal error say so."""
    cases = {
        4201: "file format invalid",
        5121: "no response after sending a page",
        5314: "failed to fetch file",
    }
    for code in cases:
        _job, fax = await reports.job(subject=f"code {code}")
        await reports.finish(fax, "failed", Outcome.FAILED, code)
    messages = await reports.settle()
    subjects = sorted(subject_of(m) for m in messages)
    assert subjects == sorted(
        f"Fax to +1 201-555-0123 failed: {text} (Re: code {code})" for code, text in cases.items()
    )
    for message in messages:
        text = message.get_body(("plain",)).get_content()
        code = int(subject_of(message).rsplit(" ", 1)[1].rstrip(")"))
        assert f"(error {code})" in text
        advice = "will most likely fail" if code in NOT_RETRYABLE else "again later may work"
        assert advice in text


async def test_delivered_report_goes_once_however_often_it_is_asked_for(
    reports: Reports,
) -> None:
    """Asking again for a report already queued (a replay after a crash) sends nothing more."""
    job, fax = await reports.job()
    final = await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    outbox_dir = reports.config.data.dir / "outbox"
    args = (reports.db, reports.config, reports.renderer, outbox_dir, job, final)
    assert await report_fax(*args, documents=reports.documents)
    assert not await report_fax(*args, documents=reports.documents)
    [message] = await reports.settle()
    assert subject_of(message) == "Fax to +1 201-555-0123 delivered, 3 pages (Re: Quarterly report)"
    assert (await reports.db.run(get_fax, fax.id)).reported_at is not None
    # Another pass finds nothing left to report.
    assert await reports.worker.run_once() == 0
    assert len(reports.relay.messages) == 1


async def test_copies_and_no_document_when_the_settings_say_so(
    start_reports: Callable[..., Any],
) -> None:
    """notify.cc receives a copy; with attach_document off the document stays home (the
    transmission report still goes)."""
    reports = await start_reports(
        {"notify": {"cc": ["records@example.com"], "attach_document": False}}
    )
    _job, fax = await reports.job()
    await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    [message] = await reports.settle()
    [mail] = reports.relay.messages
    assert mail.rcpt_tos == ("alice@example.com", "records@example.com")
    assert message["To"] == "alice@example.com"
    assert message["Cc"] == "records@example.com"
    assert [name for name, _t, _d in attachments(message)] == [
        "transmission-report-12015550123.pdf"
    ]
    assert "document that was faxed is attached" not in message.get_body(("plain",)).get_content()


async def test_which_reports_go_out_follows_notify(start_reports: Callable[..., Any]) -> None:
    """on_success off: no delivered report; on_failure still reports; nothing is re-tried."""
    reports = await start_reports({"notify": {"on_success": False}})
    _job, ok = await reports.job(subject="fine")
    _job, bad = await reports.job(subject="bad")
    await reports.finish(ok, "delivered", Outcome.SUCCEEDED)
    await reports.finish(bad, "failed", Outcome.FAILED, 5109)
    messages = await reports.settle()
    assert [subject_of(m) for m in messages] == [
        "Fax to +1 201-555-0123 failed: far end is not able to receive (Re: bad)"
    ]
    # The delivered fax counts as reported (deliberately not sent): its document may go.
    assert (await reports.db.run(get_fax, ok.id)).reported_at is not None


async def test_queued_report_once_when_asked_for(start_reports: Callable[..., Any]) -> None:
    """notify.on_queued sends one queued report for a fax still at the carrier."""
    reports = await start_reports({"notify": {"on_queued": True}})
    _job, fax = await reports.job()
    pending = await reports.finish(fax, "delivering", Outcome.PENDING)
    reporter = Reporter(
        config=reports.config,
        db=reports.db,
        renderer=reports.renderer,
        outbox_dir=reports.config.data.dir / "outbox",
    )
    assert await reporter.queued(pending)
    assert not await reporter.queued(pending)
    [message] = await reports.settle()
    assert subject_of(message) == "Fax to +1 201-555-0123 queued, 3 pages (Re: Quarterly report)"
    assert attachments(message) == []


@pytest.mark.parametrize(
    ("on_retry", "notify", "told"),
    [
        (False, "all", True),
        (True, None, True),
        (True, "none", False),
        (True, "failure", False),
        (False, None, False),
    ],
)
async def test_the_interim_retry_report_follows_the_jobs_notify_first(
    start_reports: Callable[..., Any], on_retry: bool, notify: str | None, told: bool
) -> None:
    """The "will try again" report of a fax waiting to be resubmitted follows the job's
    `+notify=` before notify.on_retry, as every other kind does: `all` gets it with the
    switch off, `none` and `failure` do not with it on."""
    reports = await start_reports(
        {"notify": {"on_retry": on_retry}, "fax": {"resubmit_attempts": 1}}
    )
    _job, fax = await reports.job(notify=notify)
    result = await reports.db.run(
        record_carrier_status, fax.carrier_id or "", "failed", Outcome.FAILED, 1, 95, 2, 5109,
        FAX_ERRORS.get(5109), None, 1, 60.0,
    )  # fmt: skip
    assert result is not None
    waiting, _final = result
    assert not waiting.final and waiting.resubmits == 1
    reporter = Reporter(
        config=reports.config,
        db=reports.db,
        renderer=reports.renderer,
        outbox_dir=reports.config.data.dir / "outbox",
    )
    assert await reporter.retry(waiting) is told
    messages = await reports.settle()
    assert ["will try again at" in subject_of(m) for m in messages] == ([True] if told else [])


async def test_a_fax_failed_before_submission_gets_the_same_failure_report(
    reports: Reports,
) -> None:
    """A fax the submit stage fails (no carrier id) is reported like a carrier failure."""
    _job, fax = await reports.job(submit=False)
    assert await reports.db.run(
        fail_fax, fax.id, None, "the carrier could not be reached for 5 days"
    )
    [message] = await reports.settle()
    assert subject_of(message) == (
        "Fax to +1 201-555-0123 failed: the carrier could not be reached for 5 days"
        " (Re: Quarterly report)"
    )
    text = message.get_body(("plain",)).get_content()
    assert "Fax id" not in text
    assert "will most likely fail the same way" in text
    assert [name for name, _t, _d in attachments(message)] == [
        "fax-to-12015550123.pdf",
        "transmission-report-12015550123.pdf",
    ]


async def test_a_fax_that_fails_again_after_an_operators_retry_is_reported_again(
    reports: Reports,
) -> None:
    """Each round an operator's retry starts has its own failure report (not deduped away)."""
    job, fax = await reports.job(submit=False)
    assert await reports.db.run(fail_job, job.id, "the carrier could not be reached")
    assert len(await reports.settle()) == 1
    assert await reports.db.run(retry_job, job.id) is not None
    again = await reports.db.run(get_fax, fax.id)
    assert again.state is FaxState.PENDING and again.rounds == 1
    assert await reports.db.run(fail_job, job.id, "the carrier could not be reached")
    first, second = await reports.settle()
    assert subject_of(first) == subject_of(second)
    assert first["Message-ID"] != second["Message-ID"]


async def test_a_cancelled_fax_is_not_reported(reports: Reports) -> None:
    """An operator's cancellation is not mailed as a failure, but counts as told."""
    job, fax = await reports.job(submit=False)
    assert await reports.db.run(cancel_job, job.id)
    assert await reports.settle() == []
    assert (await reports.db.run(get_fax, fax.id)).reported_at is not None


async def test_an_unusable_sender_leaves_only_the_copies(start_reports: Callable[..., Any]) -> None:
    """A sender that is not an address gets nothing; notify.cc still gets the report."""
    reports = await start_reports({"notify": {"cc": ["records@example.com"]}})
    _job, fax = await reports.job(sender="not an address")
    await reports.finish(fax, "failed", Outcome.FAILED, 5109)
    [message] = await reports.settle()
    assert message["To"] == "records@example.com"
    assert message["Cc"] is None
    assert [m.key for m in await reports.db.run(list_messages)] == [f"report:{fax.id}:failed"]


def _fax_with(code: int | None, description: str | None, carrier_id: str | None = "c-1") -> Fax:
    return Fax(
        id=1,
        job_id="J1",
        recipient=NUMBER,
        state=FaxState.FAILED,
        carrier_id=carrier_id,
        carrier_status="failed",
        error_code=code,
        error_description=description,
        pages=0,
        duration=0,
        carrier_attempts=1,
        submit_attempts=1,
        pickups=0,
        next_attempt_at=0,
        created_at=0,
        updated_at=0,
        submitted_at=0,
        finished_at=0,
        reported_at=None,
        submit_started_at=None,
    )


def test_carrier_words_are_one_short_clean_line() -> None:
    """The carrier's text is cut to 120 characters on one line, without control or bidi
    characters; a known code is described in the gateway's own words whatever the carrier wrote."""
    hostile = "line noise\r\nBcc: victim@example.com\x00\u202egnp.exe\u200b " + "blah " * 1000
    for details in (
        failure_details(_fax_with(5999, hostile)),  # unknown code, the carrier's words
        failure_details(_fax_with(None, hostile)),  # no code, the carrier's words
    ):
        description = str(details["error_description"])
        assert len(description) <= 120
        assert description.startswith("line noise Bcc: victim@example.com gnp.exe blah")
        assert description.isprintable()
        assert not set("\u202e\u200b\x00\r\n") & set(description)
    known = failure_details(_fax_with(5109, hostile))
    assert known["error_description"] == "far end is not able to receive"


async def test_a_long_carrier_text_leaves_the_senders_subject_in_the_report(
    reports: Reports,
) -> None:
    """A 5,000-character carrier description does not push "(Re: ...)" out of the subject."""
    _job, fax = await reports.job(subject="Signed contract")
    words = "\u202eexe.gnp " + "carrier says no " * 300 + "\r\n"
    await reports.db.run(
        record_carrier_status, fax.carrier_id or "", "failed", Outcome.FAILED, 0, 95, 1, None, words
    )
    [message] = await reports.settle()
    subject = subject_of(message)
    assert subject.endswith("(Re: Signed contract)"), subject
    assert "\u202e" not in subject
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "\u202e" not in html and "\u202e" not in text
    assert "carrier says no " * 20 not in html


# -- the transmission report -------------------------------------------------------------------


def _pdf_text(data: bytes, password: str | None = None) -> str:
    reader = PdfReader(io.BytesIO(data))
    if password is not None:
        assert reader.decrypt(password) != PasswordType.NOT_DECRYPTED
    return " ".join(page.extract_text() for page in reader.pages)


def _transmission_report(message: EmailMessage) -> bytes:
    [data] = [d for name, _t, d in attachments(message) if name.startswith("transmission-")]
    return data


async def test_the_transmission_report_is_a_fax_machines_confirmation_page(
    start_reports: Callable[..., Any],
) -> None:
    """A delivered fax's report carries a one-page PDF whose text states every fact (time in
    notify.timezone) and which shows page 1 of what was sent, reduced, in shades of grey."""
    reports = await start_reports({"notify": {"timezone": "America/New_York"}})
    job, fax = await reports.job(sender="alice@example.com")
    assert job.document_path is not None
    job.document_path.write_bytes(samples.pdf(3, label="Referral"))
    final = await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    [message] = await reports.settle()
    data = _transmission_report(message)
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    text = " ".join(reader.pages[0].extract_text().split())
    assert final.finished_at is not None
    local = datetime.fromtimestamp(final.finished_at, ZoneInfo("America/New_York"))
    for fact in (
        "TRANSMISSION VERIFICATION REPORT",
        "RESULT: OK",
        f"DATE, TIME {local:%Y-%m-%d %H:%M:%S} E",  # EST or EDT, whichever it was
        "SENDER alice@example.com",
        "FROM FAX NO. +1 201-555-0100",
        "TO FAX NO. +1 201-555-0123",
        "PAGE(S) 3",
        "DURATION 00:01:35",
        "RESULT CODE none",
        "DESCRIPTION delivered",
        "ATTEMPTS 2",
        f"CARRIER FAX ID {fax.carrier_id}",
        f"GATEWAY JOB ID {job.id}",
        "PAGE 1 (REDUCED)",
    ):
        assert fact in text, fact
    # Page 1 is there as a picture: grey, page-shaped, with the sample's black box in it.
    [picture] = reader.pages[0].images
    image = picture.image
    assert image is not None and image.mode == "L"
    assert 1.2 < image.height / image.width < 1.4  # a letter page
    dark = sum(image.histogram()[:64]) / (image.width * image.height)
    assert 0.02 < dark < 0.2
    # It prints the same in black and white: rendered, not one pixel has a colour.
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(data)
        try:
            rendered = document[0].render(scale=1).to_pil().convert("RGB")
        finally:
            document.close()
    red, green, blue = rendered.split()
    assert ImageChops.difference(red, green).getbbox() is None
    assert ImageChops.difference(green, blue).getbbox() is None
    plain = message.get_body(("plain",)).get_content()
    assert "The transmission report" in plain


async def test_a_failure_report_gets_the_code_and_description_on_its_transmission_report(
    reports: Reports,
) -> None:
    """A failed fax's transmission report says FAILED, the pages that got through, the code
    and the carrier's description of it."""
    _job, fax = await reports.job()
    await reports.finish(fax, "failed", Outcome.FAILED, 5109)
    [message] = await reports.settle()
    text = " ".join(_pdf_text(_transmission_report(message)).split())
    for fact in (
        "RESULT: FAILED",
        "PAGE(S) 1 of 3",
        "RESULT CODE 5109",
        "DESCRIPTION far end is not able to receive",
        "ATTEMPTS 2",
    ):
        assert fact in text, fact


async def test_no_transmission_report_when_switched_off(start_reports: Callable[..., Any]) -> None:
    """notify.transmission_report = false: the report carries the document only."""
    reports = await start_reports({"notify": {"transmission_report": False}})
    _job, fax = await reports.job()
    await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    [message] = await reports.settle()
    assert [name for name, _t, _d in attachments(message)] == ["fax-to-12015550123.pdf"]
    assert "transmission report" not in message.get_body(("plain",)).get_content()


async def test_a_picture_to_be_encrypted_goes_as_an_encrypted_pdf(
    start_reports: Callable[..., Any], tmp_path: Path
) -> None:
    """Under "encrypted-pdf" a PNG document becomes a PDF and is locked, never sent in clear;
    the transmission report shows its page 1 all the same."""
    password = tmp_path / "reports.pw"
    password.write_text("picture-password-1\n")
    reports = await start_reports(
        {"notify": {"attach": "encrypted-pdf", "password_file": str(password)}}
    )
    job, fax = await reports.job()
    assert job.document_path is not None
    job.document_path.write_bytes(samples.png())
    await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    [message] = await reports.settle()
    found = attachments(message)
    assert [(name, kind) for name, kind, _d in found] == [
        ("fax-to-12015550123.pdf", "application/pdf"),
        ("transmission-report-12015550123.pdf", "application/pdf"),
    ]
    for _name, _kind, data in found:
        reader = PdfReader(io.BytesIO(data))
        assert reader.is_encrypted
        assert reader.decrypt("picture-password-1") != PasswordType.NOT_DECRYPTED
    report = PdfReader(io.BytesIO(found[1][2]))
    report.decrypt("picture-password-1")
    assert len(report.pages[0].images) == 1


@pytest.mark.parametrize(
    ("notify", "wanted_kinds"),
    [
        (None, {"delivered", "failed"}),  # the configuration: on_success, on_failure
        ("none", set()),
        ("failure", {"failed"}),
        ("all", {"delivered", "failed", "queued"}),
    ],
)
async def test_a_jobs_notify_option_overrides_the_switches(
    make_config: Callable[..., Config], notify: str | None, wanted_kinds: set[str]
) -> None:
    """`+notify=` kept in the job decides which report kinds its sender gets, stored and read
    back through the store."""
    config = make_config()
    db = await Database(config.data.dir / "store.db").open()
    try:
        job_id = new_job_id()
        new = NewJob(
            id=job_id,
            sender="alice@example.com",
            auth_user=None,
            client_address=None,
            subject="",
            message_id="",
            from_number="+12015550100",
            spool_path=config.data.dir / "spool" / f"{job_id}.eml",
            recipients=("+12015550123",),
            notify=notify,
        )
        await db.run(create_job, new)
        job = await db.run(get_job, job_id)
        assert job is not None and job.notify == notify
        kinds = {kind for kind in ("delivered", "failed", "queued") if wanted(config, kind, job)}
    finally:
        db.close()
    assert kinds == wanted_kinds


def test_a_transmission_report_crosses_to_its_worker_with_its_zone() -> None:
    """What the report says travels to the document worker and back unchanged, the moment in
    the zone notify.timezone names (the printout says EST, not an offset) and in UTC."""
    for zone in (ZoneInfo("America/New_York"), UTC):
        transmission = Transmission(
            delivered=False,
            moment=datetime(2026, 1, 5, 14, 30, 5, tzinfo=zone),
            sender="alice@example.com",
            from_number="+12015550100",
            destination=NUMBER,
            pages=1,
            document_pages=3,
            duration=95,
            code=3,
            description="busy",
            carrier_id="carrier-1",
            job_id="J1",
            attempts=2,
        )
        back = Transmission.from_wire(json.loads(json.dumps(transmission.to_wire())))
        assert back == transmission
        assert back.moment is not None and back.moment.tzname() == transmission.moment.tzname()


async def test_a_transmission_report_the_worker_cannot_make_leaves_the_report_without_it(
    start_reports: Callable[..., Any],
) -> None:
    """A document worker past its time budget while rendering the transmission report: the
    report still goes, with the document and without the transmission report (logged)."""
    reports = await start_reports({"documents": {"worker_timeout_seconds": 0.001}})
    _job, fax = await reports.job()
    await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    with capture_logs() as logs:
        [message] = await reports.settle()
    assert [name for name, _t, _d in attachments(message)] == ["fax-to-12015550123.pdf"]
    assert any(e["event"] == "report.transmission_report_failed" for e in logs)


async def test_a_report_cut_short_by_the_workers_stopping_is_given_back_uncounted(
    reports: Reports,
) -> None:
    """The daemon stopping while a report waits for its transmission report: no mail, no
    attempt, no pickup; the report is due as before and goes out at the next start."""
    _job, fax = await reports.job()
    await reports.finish(fax, "delivered", Outcome.SUCCEEDED)
    await reports.documents.stop()
    assert await reports.worker.run_once() == 0  # nothing handled: given back
    row = await reports.db.run(get_fax, fax.id)
    assert (row.reported_at, row.report_attempts, row.report_pickups) == (None, 0, 0)
    assert await reports.db.run(list_messages) == []
    reports.worker.documents = DocumentWorkers(reports.config)
    try:
        [message] = await reports.settle()
    finally:
        await reports.worker.documents.stop()
    assert "transmission-report-12015550123.pdf" in [n for n, _t, _d in attachments(message)]
