"""The mail that brings an inbound fax to its recipients: numbers, names, attachments, preview.

Everything here is pure (bytes and rows in, mail parts out) and may block on document
conversion, so the inbound worker calls it in a thread.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway import log
from gateway.document import kinds
from gateway.document.convert import tiff_to_pdf
from gateway.document.preview import first_page_png
from gateway.mailout.message import InlineImage, MailAttachment
from gateway.mailout.privacy import PrivacyError
from gateway.store.inbound import InboundFax

logger = log.get_logger(__name__)

# What a withheld or odd caller id may look like to be shown as it is ("anonymous",
# "Restricted", "+1 (201) 555-0100" spelled oddly).
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 +()-]{0,31}")


def shown_number(raw: str) -> str:
    """A number the carrier gave, safe to put in a mail: '+digits' for a number, a short plain
    label for anything else ('anonymous'), 'unknown' when there is nothing usable.

    Callers may withhold their number, and the carrier passes on whatever it got, so nothing
    about this text is trusted: no line breaks, no markup, no address-like text survives.
    """
    text = " ".join(raw.split())
    digits = text.removeprefix("+")
    if digits.isdigit() and len(digits) <= 15:
        return "+" + digits
    if _LABEL.fullmatch(text):
        return text
    return "unknown"


def fax_moment(fax: InboundFax) -> datetime:
    """When the fax arrived: the carrier's time, else when we first heard of it (UTC)."""
    if fax.fax_time:
        try:
            moment = datetime.fromisoformat(fax.fax_time.strip())
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(fax.created_at, UTC)


def attachment_stem(fax: InboundFax) -> str:
    """`fax-2024-06-19-1538-from-15556668888`: sorts by time, names the caller."""
    when = fax_moment(fax).astimezone(UTC)
    caller = re.sub(r"[^0-9]", "", fax.from_number) or "unknown"
    return f"fax-{when:%Y-%m-%d-%H%M}-from-{caller}"


def attachments_for(
    fax: InboundFax, data: bytes, attach_format: str, *, max_pages: int, pdf_only: bool = False
) -> list[MailAttachment]:
    """The files to mail for the stored document, as inbound.attach_format asks, unprotected
    (the caller applies the privacy mode: gateway/mailout/privacy.py `protect`).

    A TIFF becomes a PDF for "pdf", stays a TIFF for "tiff", and goes as both for "both". A
    document that is already a PDF goes as it is whatever the setting (there is no sensible
    TIFF of it to make). When the conversion fails the TIFF is sent rather than nothing, and
    so is a TIFF of more than `max_pages` frames (inbound.max_pages: counted before decoding),
    except with `pdf_only` (attach = "encrypted-pdf": only a PDF can be encrypted): there a
    TIFF that cannot be made a PDF raises PrivacyError, and the fax is tried again and at last
    dead-lettered rather than mailed in clear. Blocking (conversion): run in a worker.
    """
    stem = attachment_stem(fax)
    kind = kinds.sniff(data)
    if kind != kinds.TIFF:
        content_type = kind or "application/octet-stream"
        return [MailAttachment(stem + kinds.extension(content_type), content_type, data)]
    result: list[MailAttachment] = []
    if attach_format in ("pdf", "both") or pdf_only:
        try:
            result.append(
                MailAttachment(stem + ".pdf", kinds.PDF, tiff_to_pdf(data, max_pages=max_pages))
            )
        except Exception as exc:
            logger.warning("inbound.convert_failed", error=f"{type(exc).__name__}: {exc}")
    if (attach_format in ("tiff", "both") or not result) and not pdf_only:
        result.append(MailAttachment(stem + ".tif", kinds.TIFF, data))
    if not result:
        raise PrivacyError("the TIFF could not be made a PDF, and only a PDF can be encrypted")
    return result


def preview_of(fax: InboundFax, data: bytes) -> InlineImage | None:
    """A PNG of page 1 for the HTML part, or None (the mail goes without one). Whether one is
    wanted at all is the privacy mode's to say (only attach = "pdf" shows one). Blocking."""
    kind = kinds.sniff(data)
    if kind is None:
        return None
    try:
        png = first_page_png(data, kind)
    except Exception as exc:
        logger.warning("inbound.preview_failed", error=f"{type(exc).__name__}: {exc}")
        return None
    safe_id = re.sub(r"[^A-Za-z0-9]", "", fax.carrier_id)[:40] or str(fax.id)
    return InlineImage(f"page1.{safe_id}@fax-gateway", kinds.PNG, png)
