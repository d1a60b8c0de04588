"""Between extract and assemble: plain-text and office attachments become PDF attachments.

`to_faxable` takes what `mime.extract(raw, convertible=CONVERTIBLE)` found and returns it with
every attachment faxable, in the same order:

- plain text (kinds.TEXT) is always drawn as monospace pages (text.py); it is deterministic
  and cheap, so the SMTP handler (to count and check) and the prepare worker (to build) each
  draw it;
- an office file (kinds.OFFICE_TYPES) is converted by LibreOffice (office.py) when
  documents.convert_office is on, and named as unsupported when it is off, as before the
  feature existed. The SMTP handler converts before it answers 250 and keeps each PDF in the
  spool beside the message (`Spool.write_converted`), so the pages promised are the pages
  faxed and LibreOffice runs once per file; the prepare worker passes those back as `known`
  and converts only what is missing (a message spooled by an older version).

Blocking (subprocesses, drawing): callers use `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.document.kinds import OFFICE_TYPES, PDF, TEXT
from gateway.document.mime import UNSUPPORTED, Attachment, DocumentError, Extracted
from gateway.document.office import OfficeConverter
from gateway.document.text import text_to_pdf

# What extract should keep for this module (the rest stays "unsupported").
CONVERTIBLE: frozenset[str] = frozenset({TEXT}) | OFFICE_TYPES


@dataclass(frozen=True)
class Faxable:
    """A message's parts after conversion: all attachments faxable, and the PDFs LibreOffice
    made, by the index of their attachment (what the spool keeps)."""

    extracted: Extracted
    converted: dict[int, bytes] = field(default_factory=dict)


def needs_libreoffice(extracted: Extracted) -> bool:
    """Whether any attachment is an office file."""
    return any(a.content_type in OFFICE_TYPES for a in extracted.attachments)


def check_office_count(extracted: Extracted, limit: int) -> None:
    """Refuse a message with more office files than `limit` (documents.max_office_files): each
    costs a LibreOffice run, so a message cannot ask for hundreds of them."""
    count = sum(1 for a in extracted.attachments if a.content_type in OFFICE_TYPES)
    if count > limit:
        raise DocumentError(
            f"the message has {count} office files; at most {limit} are converted per message"
            " (documents.max_office_files)",
            kind=UNSUPPORTED,
        )


def to_faxable(
    extracted: Extracted,
    *,
    office: OfficeConverter,
    paper: str,
    max_pages: int,
    known: Mapping[int, bytes] | None = None,
) -> Faxable:
    """`extracted` with text and office attachments as PDFs (see the module docstring).

    Raises DocumentError naming the file that cannot be converted, and ConversionBusy when no
    LibreOffice slot became free in time.
    """
    known = known or {}
    attachments: list[Attachment] = []
    unsupported = list(extracted.unsupported)
    converted: dict[int, bytes] = {}
    for index, attachment in enumerate(extracted.attachments):
        if attachment.content_type == TEXT:
            pdf = text_to_pdf(
                attachment.data, paper=paper, max_pages=max_pages, label=attachment.label
            )
        elif attachment.content_type in OFFICE_TYPES:
            if index in known:
                pdf = known[index]
            elif office.enabled:
                pdf = office.convert(attachment)
            else:
                unsupported.append(attachment.label)
                continue
            converted[index] = pdf
        else:
            attachments.append(attachment)
            continue
        attachments.append(Attachment(attachment.filename, PDF, pdf))
    return Faxable(
        replace(extracted, attachments=tuple(attachments), unsupported=tuple(unsupported)),
        converted,
    )
