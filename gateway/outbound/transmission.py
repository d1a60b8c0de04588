"""The transmission report: an office fax machine's confirmation page, as a one-page PDF.

Attached to every delivered and failed report (notify.transmission_report), it is the proof a
fax went out that people in healthcare and law file away: date and time (notify.timezone),
sender, destination, pages, duration, the result with its code and description, the carrier's
fax id, the gateway's job id, the attempts, and a reduced picture of page 1 of what was sent
(rendered by gateway/document/preview.py: pypdfium2 for a PDF). Black on white only, in the
monospaced look of a fax machine's printout, so it reads the same printed in black and white.
All text is real text (fpdf2's core fonts), so it can be searched and read by programs.

`render_transmission_report` is pure (values and a picture in, PDF bytes out);
`transmission_of` gathers those values from a job and its fax. Rendering (page 1 by pdfium,
the page by fpdf: ~17 ms a report, the largest piece of a fax's CPU in the daemon) runs in a
document worker process (`render_in_worker`, the worker's side `render_report`), off the
daemon's event loop and GIL; `transmission_attachment` then locks the result like the document
under "encrypted-pdf", in the daemon, which alone has the password (under "none" the report
goes without the picture of page 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fpdf import FPDF
from PIL import Image

from gateway import log
from gateway.config import Config
from gateway.document import kinds
from gateway.document.mime import DocumentError
from gateway.document.pool import WorkerDied
from gateway.document.preview import first_page_image
from gateway.document.workers import DocumentWorkers
from gateway.mailout.message import MailAttachment
from gateway.mailout.privacy import Privacy, protect
from gateway.numbers import pretty
from gateway.store.records import Fax, FaxState, Job

logger = log.get_logger(__name__)

TITLE = "TRANSMISSION VERIFICATION REPORT"
# Page sizes in points, as config.fax.paper names them.
_PAPER = {"letter": (612.0, 792.0), "a4": (595.28, 841.89)}
_MARGIN = 54.0
_LABEL_WIDTH = 130.0
_LINE = 15.0
# Width in pixels of the page-1 picture embedded: sharp at the size it is shown, small enough.
PAGE1_WIDTH = 700


@dataclass(frozen=True)
class Transmission:
    """What the report says about one fax; None where it is not known."""

    delivered: bool
    moment: datetime | None  # aware, in the zone the report is printed in
    sender: str
    from_number: str
    destination: str  # E.164
    pages: int | None  # the carrier's count (for a failure: pages that got through)
    document_pages: int | None
    duration: int | None  # seconds
    code: int | None
    description: str
    carrier_id: str | None
    job_id: str
    attempts: int | None

    def to_wire(self) -> dict[str, Any]:
        """As JSON values, for a document worker (the moment as a timestamp and its zone's
        name: the printout names the zone as notify.timezone does)."""
        data = dataclasses.asdict(self)
        if self.moment is not None:
            data["moment"] = [self.moment.timestamp(), getattr(self.moment.tzinfo, "key", "UTC")]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Transmission:
        fields = dict(data)
        if fields["moment"] is not None:
            stamp, zone = fields["moment"]
            fields["moment"] = datetime.fromtimestamp(
                stamp, UTC if zone == "UTC" else ZoneInfo(zone)
            )
        return cls(**fields)


def transmission_of(
    config: Config, job: Job, fax: Fax, *, moment: datetime | None, description: str
) -> Transmission:
    """What the report on `fax` (final) says, `moment` printed in notify.timezone."""
    return Transmission(
        delivered=fax.state is FaxState.DELIVERED,
        moment=moment.astimezone(config.notify.zone) if moment else None,
        sender=job.sender,
        from_number=job.from_number,
        destination=fax.recipient,
        pages=fax.pages,
        document_pages=job.pages,
        duration=fax.duration,
        code=fax.error_code,
        description=description,
        carrier_id=fax.carrier_id,
        job_id=job.id,
        attempts=fax.carrier_attempts,
    )


# Why page 1 is missing, where the privacy mode keeps the document's content out of the mail.
WITHOUT_CONTENT = "Page 1 is not shown: this report goes without the document's content."


def render_report(
    transmission: Transmission,
    document: tuple[bytes, str] | None,
    *,
    paper: str,
    carries_document: bool,
) -> bytes:
    """The report's PDF (blocking: a document worker's task). `document` is the document sent
    (bytes, type), None when it is no longer kept; its page 1 is shown when `carries_document`."""
    page1, note = None, WITHOUT_CONTENT
    if carries_document:
        page1, note = _page1(transmission.job_id, document)
    return render_transmission_report(transmission, page1, paper=paper, without_page1=note)


async def render_in_worker(
    documents: DocumentWorkers,
    config: Config,
    job: Job,
    fax: Fax,
    *,
    moment: datetime | None,
    description: str,
    privacy: Privacy,
) -> MailAttachment | None:
    """The report on `fax` (final) as `transmission-report-<digits>.pdf`, rendered in a
    document worker and locked as `privacy` says, or None (logged) if it cannot be made: the
    report mail goes without it. WorkersStopped (the daemon is stopping) is raised."""
    transmission = transmission_of(config, job, fax, moment=moment, description=description)
    try:
        data = await documents.transmission_report(
            transmission,
            document_path=job.document_path if privacy.carries_document else None,
            document_type=job.document_type,
            paper=config.fax.paper,
            carries_document=privacy.carries_document,
        )
    except (WorkerDied, DocumentError, OSError, RuntimeError) as exc:
        logger.warning("report.transmission_report_failed", job_id=job.id, error=_reason(exc))
        return None
    return await asyncio.to_thread(transmission_attachment, fax, data, privacy, job.id)


def transmission_attachment(
    fax: Fax, data: bytes, privacy: Privacy, job_id: str
) -> MailAttachment | None:
    """The rendered report `data` as the mail's attachment, encrypted under "encrypted-pdf"
    (blocking); None (logged) if that fails: never in clear where it must be locked."""
    digits = "".join(c for c in fax.recipient if c.isdigit())
    try:
        return protect(
            MailAttachment(f"transmission-report-{digits}.pdf", kinds.PDF, data), privacy
        )
    except Exception as exc:
        logger.warning("report.transmission_report_failed", job_id=job_id, error=_reason(exc))
        return None


def _page1(job_id: str, document: tuple[bytes, str] | None) -> tuple[Image.Image | None, str]:
    """The reduced picture of page 1 of the document sent, or None and why not."""
    if document is None:
        return None, "Page 1 is not shown: the document is no longer kept."
    data, kind = document
    try:
        # The picture itself, not a PNG of it: fpdf compresses it once, into the report.
        return first_page_image(data, kind, width=PAGE1_WIDTH).convert("L"), ""
    except Exception as exc:
        logger.warning("report.page1_failed", job_id=job_id, error=_reason(exc))
        return None, "Page 1 is not shown: the document could not be rendered."


def _reason(exc: Exception) -> str:
    # The exception's type and message only: never the data it was given.
    return f"{type(exc).__name__}: {exc}"[:300]


def render_transmission_report(
    transmission: Transmission,
    page1: Image.Image | None,
    *,
    paper: str = "letter",
    without_page1: str = "Page 1 is not shown.",
) -> bytes:
    """The report as PDF bytes; `page1` is the reduced picture of page 1, or None (then
    `without_page1` says why in its place)."""
    pdf = FPDF(unit="pt", format=_PAPER[paper])
    pdf.set_auto_page_break(False)
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_creator("fax-gateway")
    pdf.set_title("Transmission report")
    if transmission.moment is not None:
        pdf.set_creation_date(transmission.moment)
    pdf.add_page()
    width = pdf.epw

    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(width, 26, TITLE, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)

    # The verdict first, large and framed: what a glance at the printout must tell.
    verdict = "RESULT: OK" if transmission.delivered else "RESULT: FAILED"
    pdf.set_line_width(2.5)
    pdf.set_font("Helvetica", "B", 22)
    pdf.cell(width, 38, verdict, border=1, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(12)

    pdf.set_line_width(0.8)
    for label, value in _rows(transmission):
        pdf.set_font("Courier", "B", 10)
        pdf.cell(_LABEL_WIDTH, _LINE, label)
        pdf.set_font("Courier", "", 10)
        pdf.multi_cell(width - _LABEL_WIDTH, _LINE, _printable(value), new_x="LMARGIN")
    pdf.ln(6)
    pdf.line(_MARGIN, pdf.get_y(), _MARGIN + width, pdf.get_y())
    pdf.ln(8)

    pdf.set_font("Courier", "B", 10)
    pdf.cell(width, _LINE, "PAGE 1 (REDUCED)", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    top = pdf.get_y()
    bottom = pdf.h - _MARGIN
    if page1 is not None:
        _place(pdf, page1, top, bottom - top)
    else:
        pdf.set_font("Courier", "", 10)
        pdf.set_y(top + 24)
        pdf.multi_cell(width, _LINE, _printable(without_page1), align="C", new_x="LMARGIN")
    out = pdf.output()
    return bytes(out)


def _rows(t: Transmission) -> list[tuple[str, str]]:
    when = t.moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if t.moment else "unknown"
    if t.delivered:
        pages = _count(t.pages if t.pages else t.document_pages)
        result, code = "OK (delivered)", "none"
    else:
        sent = _count(t.pages or 0)
        pages = f"{sent} of {t.document_pages}" if t.document_pages else sent
        result = "FAILED"
        code = str(t.code) if t.code is not None else "none (failed before the carrier dialled)"
    return [
        ("DATE, TIME", when),
        ("SENDER", t.sender),
        ("FROM FAX NO.", pretty(t.from_number)),
        ("TO FAX NO.", pretty(t.destination)),
        ("PAGE(S)", pages),
        ("DURATION", _clock(t.duration)),
        ("RESULT", result),
        ("RESULT CODE", code),
        ("DESCRIPTION", t.description),
        ("ATTEMPTS", _count(t.attempts)),
        ("CARRIER FAX ID", t.carrier_id or "none (never reached the carrier)"),
        ("GATEWAY JOB ID", t.job_id),
    ]


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _clock(seconds: int | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(max(int(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _printable(text: str) -> str:
    """`text` in the core fonts' Latin-1, one line: other characters become '?'."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(" " if unicodedata.category(c).startswith(("C", "Z")) else c for c in folded)
    return " ".join(visible.split()).encode("latin-1", "replace").decode("latin-1")


def _place(pdf: FPDF, page1: Image.Image, top: float, room: float) -> None:
    """The picture in grey, as large as fits under `top`, centred and framed."""
    grey = page1.convert("L")
    ratio = grey.height / max(grey.width, 1)
    height = room
    width = height / ratio
    if width > pdf.epw:
        width, height = pdf.epw, pdf.epw * ratio
    x = _MARGIN + (pdf.epw - width) / 2
    # The image as it is (fpdf deflates it once): a PNG made here with optimize=True, only for
    # fpdf to decode and deflate again, was most of the report's CPU.
    pdf.image(grey, x=x, y=top, w=width, h=height, alt_text="Page 1 of the fax as sent")
    pdf.set_line_width(0.8)
    pdf.rect(x, top, width, height)
