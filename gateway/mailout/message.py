"""Building the mail the gateway sends: a safe EmailMessage from rendered text and files.

Values in a mail come from strangers: the carrier's payload, the sender's subject, a caller's
name. So nothing rendered can reach a header unfiltered: the subject is collapsed to one line
without control characters, recipients must each be one plain addr-spec and the From one
mailbox (a display name allowed, no line break, no second address), threading ids must be
well-formed msg-ids, and attachment names are reduced to a harmless file name. Rendering the
text itself is gateway/mailout/templates.py's job.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid

from gateway.addresses import clean_address, split_mailbox
from gateway.mailout.wire import BASE64_BODIES

# Long enough for "Fax to +44 20 7183 8750 failed: <reason> (Re: <their subject>)", short
# enough that no client truncates it into nonsense. Headers are folded, so this is about
# readability, not line length.
MAX_SUBJECT_CHARS = 200
MAX_FILENAME_CHARS = 100

# Unicode characters that move or hide text (bidi embeddings, overrides, isolates and marks,
# U+061C the Arabic letter mark among them): a subject or a body containing them can display as
# something else than it is ("invoice\u202egnp.exe" shows as "invoiceexe.png").
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_NO_BIDI = dict.fromkeys(map(ord, _BIDI_CONTROLS))
# A msg-id as RFC 5322 allows it in practice: printable ASCII, no spaces, one "@" inside <>.
_MSG_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(@[A-Za-z0-9.-]+)?")
_CONTENT_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
_DOMAIN = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
# Characters that are unsafe in a file name on some system a recipient may save it to.
_FILENAME_UNSAFE = re.compile(r'[\\/:*?"<>|;]')


@dataclass(frozen=True)
class RenderedMail:
    """The human part of a mail: one-line subject, plain text, and optionally HTML."""

    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class MailAttachment:
    """A file attached to a mail (the faxed document, an inbound fax)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class InlineImage:
    """An image the HTML part shows with `<img src="cid:{cid}">` (the page-1 preview)."""

    cid: str
    content_type: str
    data: bytes


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- header hygiene ---------------------------------------------------------------------------


def without_bidi(text: str) -> str:
    """`text` without bidi controls; every other character (RTL letters too) as it is. A
    markupsafe Markup stays Markup (its translate keeps the type)."""
    return text.translate(_NO_BIDI)


def clean_subject(text: str, limit: int = MAX_SUBJECT_CHARS) -> str:
    """One line of printable text: every control character, CR and LF removed or spaced."""
    chars: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if char in _BIDI_CONTROLS:
            continue
        if category in ("Cc", "Zl", "Zp") or char.isspace():
            # Line breaks and tabs separate words: keep them as a space, not glued together.
            chars.append(" ")
        elif category in ("Cs", "Co", "Cn"):
            continue
        else:
            chars.append(char)
    line = " ".join("".join(chars).split())
    if len(line) > limit:
        cut = line[: limit - 1]
        # Cut at a word boundary when one is reasonably near the end.
        space = cut.rfind(" ")
        if space > limit * 0.6:
            cut = cut[:space]
        line = cut.rstrip() + "\u2026"
    return line


def clean_msg_id(value: str | None) -> str | None:
    """A well-formed `<left@right>` msg-id, or None when `value` is not one.

    A bare `left@right` (some stores keep the id without brackets) is put in brackets.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    if len(text) > 250 or not _MSG_ID.fullmatch(text):
        return None
    return text


def clean_references(value: str | None) -> list[str]:
    """The well-formed msg-ids of a References value; the rest is dropped."""
    if not value:
        return []
    ids = [clean_msg_id(part) for part in value.split()]
    return [i for i in ids if i is not None]


def clean_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A file name safe to show and save: no path, no control or shell-hostile characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in base
        if c not in _BIDI_CONTROLS and unicodedata.category(c) not in ("Cs", "Co", "Cn", "Cf")
    )
    base = _FILENAME_UNSAFE.sub("_", base)
    base = " ".join(base.split()).lstrip(".").strip()
    if len(base) > MAX_FILENAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            base = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            base = base[:MAX_FILENAME_CHARS].rstrip()
    if not base:
        base = "attachment" + _extension_for(content_type)
    return base


def _extension_for(content_type: str) -> str:
    return {
        "application/pdf": ".pdf",
        "image/tiff": ".tif",
        "image/png": ".png",
        "text/plain": ".txt",
    }.get(content_type.lower(), ".bin")


def _split_content_type(content_type: str) -> tuple[str, str]:
    match = _CONTENT_TYPE.fullmatch(content_type.strip().lower())
    if match is None:
        raise ValueError(f"{content_type!r} is not a MIME content type")
    return match.group(1), match.group(2)


# -- building the message ------------------------------------------------------------------


def build_message(
    *,
    from_address: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    rendered: RenderedMail,
    attachments: Sequence[MailAttachment] = (),
    inline_images: Sequence[InlineImage] = (),
    in_reply_to: str | None = None,
    references: str | None = None,
    message_id_domain: str,
    date: datetime | None = None,
) -> EmailMessage:
    """An automatic mail: text part always, HTML (with inline images) and attachments if given.

    Structure: text/plain alone; or multipart/alternative (text, html); the html side becomes
    multipart/related when inline images come with it; all of that inside multipart/mixed when
    there are attachments. Raises ValueError for an unusable address, content type or cid; a
    bad threading id is dropped instead, because a report without threading is still a report.
    """
    if not to:
        raise ValueError("a mail needs at least one recipient")
    if not _DOMAIN.fullmatch(message_id_domain):
        raise ValueError(f"{message_id_domain!r} is not a domain for Message-IDs")
    # From may carry a display name (relay.from_address = "Fax Gateway <fax@example.com>"); an
    # Address object, not text, goes into the header, so the email package quotes or encodes
    # the name itself and the header holds exactly this one mailbox.
    sender_name, sender_address = split_mailbox(from_address)
    to_list = [clean_address(a) for a in to]
    cc_list = [clean_address(a) for a in cc]

    message = EmailMessage()
    message["From"] = Address(display_name=sender_name, addr_spec=sender_address)
    message["To"] = ", ".join(to_list)
    if cc_list:
        message["Cc"] = ", ".join(cc_list)
    # Subject again through the filter: a RenderedMail may have been made without the renderer.
    message["Subject"] = clean_subject(rendered.subject)
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=message_id_domain)
    # RFC 3834: mail sent by a program, not a person. Well-behaved auto-responders (vacation
    # replies, "out of office") do not answer it, so two robots cannot mail each other forever.
    message["Auto-Submitted"] = "auto-generated"
    # Exchange/Outlook ignore Auto-Submitted but honour this one.
    message["X-Auto-Response-Suppress"] = "All"

    parent = clean_msg_id(in_reply_to)
    refs = clean_references(references)
    if parent is not None:
        message["In-Reply-To"] = parent
        # References carries the parent's chain and then the parent itself (RFC 5322 3.6.4).
        if parent not in refs:
            refs.append(parent)
    if refs:
        message["References"] = " ".join(refs)

    # Quoted-printable keeps every part 7-bit clean, so no relay has to convert 8-bit text.
    message.set_content(normalize_newlines(rendered.text), cte="quoted-printable")
    if rendered.html is not None:
        message.add_alternative(
            normalize_newlines(rendered.html), subtype="html", cte="quoted-printable"
        )
        html_part = message.get_payload()[1]  # type: ignore[index]
        assert isinstance(html_part, MIMEPart)  # add_alternative made it one
        for image in inline_images:
            if not _CID.fullmatch(image.cid):
                raise ValueError(f"{image.cid!r} is not a usable Content-ID")
            maintype, subtype = _split_content_type(image.content_type)
            if maintype != "image":
                raise ValueError(f"inline {image.content_type!r} is not an image")
            html_part.add_related(
                image.data,
                maintype=maintype,
                subtype=subtype,
                cid=f"<{image.cid}>",
                disposition="inline",
                filename=clean_filename(f"{image.cid.split('@')[0]}.{subtype}", image.content_type),
                content_manager=BASE64_BODIES,
            )
    # Without an HTML part there is nothing to show inline images in: they are left out.
    for attachment in attachments:
        maintype, subtype = _split_content_type(attachment.content_type)
        message.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype,
            filename=clean_filename(attachment.filename, attachment.content_type),
            # Base64 in one call, not one per line (mailout/wire.py): the same text.
            content_manager=BASE64_BODIES,
        )
    # The email package gives nested multiparts their own MIME-Version; only the top one counts.
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]
    return message
