"""Finding what to fax in a mail message: its subject, its body text and its faxable attachments.

A mail is parsed once, with `email.policy.compat32`, which keeps header values as the raw
strings they arrived as (large bodies skip the line-by-line parser: `mimeparse`), and walked in
message order. Only the few headers whose decoded form matters (Subject, the filename
parameters) are read with `email.policy.default`'s header parser, one header at a time: parsing
the whole message with that policy re-parsed Content-Type some twenty times per part and cost
14x the compat32 parse (docs/benchmarks.md). The rules, and why:

- A part is faxable when its *bytes* are PDF, TIFF, PNG or JPEG (see `kinds.sniff`); the declared
  type and the filename are hints people and clients get wrong (`application/octet-stream` named
  `scan.pdf`, a PNG sent as `image/jpeg`).
- A part that claims to be PDF/TIFF/PNG/JPEG (by type or name) but whose bytes are not is kept as
  an attachment of the claimed type, so that validation calls it *corrupt* by name instead of
  silently dropping the file the sender meant to fax.
- Images that an HTML body shows (`cid:` references, or a `Content-Location` the HTML names) are
  signature logos and inline pictures of the text, not documents: they are skipped. So are images
  that sit in a `multipart/related` beside an HTML root without an `attachment` disposition: that
  container means "resources of the HTML", even when the HTML no longer refers to them (a logo
  left behind by a quoted reply).
- An image outside `multipart/related` that is inline (or has no disposition) and that no HTML
  refers to *is* faxed: that is how iOS Mail and Apple Mail send photos and scans a person added
  to a mail, and a plain-text mail cannot show an image any other way than as content.
- In `multipart/alternative` the plain text wins for the body; attachments come from the last
  (richest) alternative that has any, so a client that repeats a file per alternative does not
  fax it twice.
- A forwarded message (`message/rfc822`, "forward as attachment") contributes its attachments in
  place, but not its body text: people forward a mail to fax what it carried.
- Signatures (S/MIME, PGP) and AppleDouble resource forks are protocol furniture: ignored, and
  never named as "cannot be faxed".
- Parts of a type the caller can convert (`convertible`: plain-text and office attachments, see
  kinds.convertible_type) are kept as attachments of that type, in message order, for
  gateway/document/conversion.py to turn into PDF; a plain-text attachment's text is decoded by
  its charset and kept as UTF-8. Without `convertible` they are named as unsupported.

`extract` never raises anything but `DocumentError` (kind "malformed"), whatever the input bytes.

The rules above are one walk over one tree, each depending on what the others decided about the
same part, so they stay in this one module; a part's headers are read by
gateway/document/headers.py, an HTML body's text by gateway/document/htmltext.py.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import unquote

from gateway.document import headers, mimeparse
from gateway.document.htmltext import html_to_text
from gateway.document.kinds import TEXT, claimed_type, convertible_type, sniff

NO_DOCUMENT = "no_document"
UNSUPPORTED = "unsupported"
CORRUPT = "corrupt"
TOO_MANY_PAGES = "too_many_pages"
MALFORMED = "malformed"
# Reading it would cost more memory or time than a document worker may spend
# (documents.worker_memory_mb, documents.worker_timeout_seconds: gateway/document/pool.py).
TOO_COSTLY = "too_costly"
KINDS = frozenset({NO_DOCUMENT, UNSUPPORTED, CORRUPT, TOO_MANY_PAGES, MALFORMED, TOO_COSTLY})

# An SMTP reply line may be 512 octets including "554 5.6.0 " and CRLF; stay well inside.
MAX_MESSAGE_CHARS = 400

# Deeper than any mail client nests; a hostile message could otherwise exhaust the stack.
_MAX_DEPTH = 40

_IGNORED_TYPES = frozenset(
    {
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
        "application/pgp-signature",
        "application/pgp-keys",
        "application/applefile",
    }
)


def one_line_ascii(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` as one line of printable ASCII: accents dropped, other letters as '?', cut to fit."""
    out: list[str] = []
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(char):
            continue
        if char.isspace() or unicodedata.category(char).startswith("C"):
            out.append(" ")
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append("?")
    line = " ".join("".join(out).split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


class DocumentError(Exception):
    """A message cannot be faxed; str() is one ASCII line fit for an SMTP reply to the sender.

    `kind` is one of "no_document", "unsupported", "corrupt", "too_many_pages", "malformed",
    "too_costly".
    """

    def __init__(self, message: str, *, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown DocumentError kind {kind!r}")
        self.kind = kind
        self.message = one_line_ascii(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Attachment:
    """One faxable part: `content_type` is what its bytes are (or claim to be, if damaged)."""

    filename: str | None
    content_type: str
    data: bytes

    @property
    def label(self) -> str:
        """How to name this part to a person: its filename, or its type."""
        return self.filename or self.content_type


@dataclass(frozen=True)
class Extracted:
    """What a mail offers to fax: headers people see, its text, and its parts in message order."""

    subject: str
    message_id: str
    body_text: str
    attachments: tuple[Attachment, ...]
    unsupported: tuple[str, ...]


def extract(raw: bytes, *, convertible: frozenset[str] = frozenset()) -> Extracted:
    """Parse a raw RFC 5322 message and find its faxable parts (see the module docstring).

    Parts of the types in `convertible` (kinds.TEXT, kinds.OFFICE_TYPES) are kept as
    attachments to convert instead of being named as unsupported.
    """
    try:
        return _extract(bytes(raw), convertible)
    except DocumentError:
        raise
    except Exception:
        # The email package raises a zoo of errors (IndexError, ValueError, RecursionError...)
        # on hostile input; to the sender they all mean the same thing.
        raise DocumentError(
            "the message could not be read: its MIME structure is damaged", kind=MALFORMED
        ) from None


@dataclass
class _Found:
    """What one subtree of the message holds."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def add(self, other: _Found) -> None:
        self.plain += other.plain
        self.html += other.html
        self.attachments += other.attachments
        self.unsupported += other.unsupported

    @property
    def has_parts(self) -> bool:
        return bool(self.attachments or self.unsupported)


# Bounds on headers, checked before the modern parser sees them: policy.default's header parser
# is super-linear in memory on long runs of RFC 2047 encoded words (10,000 of them in a 131 KB
# Subject took the process to 1.4 GB). Real mail stays far below: a long subject in a
# non-Latin script is a few dozen encoded words.
MAX_ENCODED_WORDS = 100
MAX_HEADER_CHARS = 16 * 1024
MAX_HEADER_BLOCK_CHARS = 256 * 1024
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?")


def check_headers(message: Message) -> None:
    """Refuse a message any of whose parts carries a header past the bounds above, naming it.

    `message` is parsed with compat32, which keeps header values as raw strings (linear in
    their size); nothing here decodes them.
    """
    for part in message.walk():
        block = 0
        for name, value in part._headers:  # the raw (name, value) pairs: no parsing
            text = value if isinstance(value, str) else str(value)
            block += len(name) + len(text)
            words = len(_ENCODED_WORD.findall(text)) if "=?" in text else 0
            if words > MAX_ENCODED_WORDS or len(text) > MAX_HEADER_CHARS:
                raise DocumentError(
                    f"the {_shown_name(name)} header is too long ({len(text)} characters,"
                    f" {words} encoded words; at most {MAX_HEADER_CHARS} and"
                    f" {MAX_ENCODED_WORDS})",
                    kind=MALFORMED,
                )
        if block > MAX_HEADER_BLOCK_CHARS:
            raise DocumentError(
                f"a part's headers are too long ({block} characters; at most"
                f" {MAX_HEADER_BLOCK_CHARS})",
                kind=MALFORMED,
            )


def _shown_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9-]", "", name)[:40]
    return cleaned or "unnamed"


def _extract(raw: bytes, convertible: frozenset[str]) -> Extracted:
    message = mimeparse.parse(raw)
    check_headers(message)
    references = _html_references(message)
    found = _Walker(references, convertible).visit(message, depth=0, resource=False)
    body = "\n\n".join(t for t in found.plain if t.strip()) or "\n\n".join(
        t for t in found.html if t.strip()
    )
    return Extracted(
        subject=headers.header_text(message, "subject"),
        message_id=" ".join(headers.raw_header(message, "message-id").split()),
        body_text=_tidy_text(body),
        attachments=tuple(found.attachments),
        unsupported=tuple(found.unsupported),
    )


@dataclass(frozen=True)
class _References:
    """What the HTML bodies of a message show inline: Content-IDs and Content-Locations."""

    cids: frozenset[str]
    locations: frozenset[str]


class _Walker:
    def __init__(self, references: _References, convertible: frozenset[str]) -> None:
        self.references = references
        self.convertible = convertible

    def visit(self, part: Message, *, depth: int, resource: bool) -> _Found:
        if depth > _MAX_DEPTH:
            raise DocumentError(
                "the message could not be read: its parts are nested too deeply", kind=MALFORMED
            )
        if not part.is_multipart():
            return self._leaf(part, resource=resource)
        content_type = part.get_content_type()
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if content_type == "message/rfc822":
            return self._forwarded(part, children, depth)
        if not content_type.startswith("multipart/"):
            # message/delivery-status and friends: reports, nothing to fax or to read.
            return _Found()
        if content_type == "multipart/alternative":
            return self._alternative(children, depth, resource)
        if content_type == "multipart/related":
            return self._related(part, children, depth)
        if content_type == "multipart/signed" and children:
            # The first part is the content; the rest is the signature.
            return self.visit(children[0], depth=depth + 1, resource=resource)
        found = _Found()
        for child in children:
            found.add(self.visit(child, depth=depth + 1, resource=resource))
        return found

    def _alternative(self, children: list[Message], depth: int, resource: bool) -> _Found:
        subs = [self.visit(c, depth=depth + 1, resource=resource) for c in children]
        found = _Found()
        found.plain = next((s.plain for s in subs if s.plain), [])
        found.html = next((s.html for s in reversed(subs) if s.html), [])
        richest = next((s for s in reversed(subs) if s.has_parts), None)
        if richest is not None:
            found.attachments = richest.attachments
            found.unsupported = richest.unsupported
        return found

    def _related(self, part: Message, children: list[Message], depth: int) -> _Found:
        if not children:
            return _Found()
        start = headers.strip_id(str(part.get_param("start", "") or ""))
        root = next((c for c in children if start and headers.content_id(c) == start), children[0])
        found = _Found()
        for child in children:
            found.add(self.visit(child, depth=depth + 1, resource=child is not root))
        return found

    def _forwarded(self, part: Message, children: list[Message], depth: int) -> _Found:
        found = _Found()
        for inner in children:
            sub = self.visit(inner, depth=depth + 1, resource=False)
            found.attachments += sub.attachments
            found.unsupported += sub.unsupported
        if not found.has_parts:
            # Nothing faxable inside: name the forwarded mail so the error says what was seen.
            subject = headers.header_text(children[0], "subject") if children else ""
            label = headers.filename(part) or (
                f'forwarded message "{subject}"' if subject else "forwarded message"
            )
            found.unsupported.append(label)
        return found

    def _leaf(self, part: Message, *, resource: bool) -> _Found:
        found = _Found()
        content_type = part.get_content_type()
        if content_type in _IGNORED_TYPES:
            return found
        disposition = part.get_content_disposition()
        filename = headers.filename(part)
        if content_type.startswith("text/") and disposition != "attachment" and not filename:
            if content_type == "text/plain":
                found.plain.append(_text_of(part))
            elif content_type == "text/html":
                found.html.append(html_to_text(_text_of(part)))
            else:
                found.unsupported.append(content_type)
            return found
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        sniffed = sniff(data)
        is_image = content_type.startswith("image/") or (sniffed or "").startswith("image/")
        if is_image and self._shown_by_html(part):
            return found
        if is_image and resource and disposition != "attachment":
            return found
        kind = sniffed or claimed_type(content_type, filename)
        if kind is not None:
            found.attachments.append(Attachment(filename, kind, data))
            return found
        convert = convertible_type(content_type, filename)
        if convert is not None and convert in self.convertible:
            if convert == TEXT:
                data = _text_of(part).encode("utf-8", "replace")
            found.attachments.append(Attachment(filename, convert, data))
        else:
            found.unsupported.append(filename or content_type)
        return found

    def _shown_by_html(self, part: Message) -> bool:
        cid = headers.content_id(part)
        if cid and cid in self.references.cids:
            return True
        location = headers.raw_header(part, "content-location").strip().lower()
        return bool(location) and location in self.references.locations


def _html_references(message: Message) -> _References:
    cids: set[str] = set()
    locations: set[str] = set()
    for part in _walk(message, depth=0):
        if part.get_content_type() != "text/html" or part.get_content_disposition() == "attachment":
            continue
        html = _text_of(part)
        cids.update(headers.strip_id(unquote(m)) for m in _CID_RE.findall(html))
        locations.update(unquote(m).strip().lower() for m in _SRC_RE.findall(html))
    return _References(frozenset(cids), frozenset(locations))


def _walk(part: Message, depth: int) -> list[Message]:
    """Every part of the tree, with the same depth bound as the walker."""
    if depth > _MAX_DEPTH:
        return []
    if not part.is_multipart():
        return [part]
    parts = [part]
    for child in part.get_payload():
        if isinstance(child, Message):
            parts += _walk(child, depth + 1)
    return parts


# `cid:` anywhere in the HTML: <img src>, <td background>, CSS url(), Outlook's VML.
_CID_RE = re.compile(r"""cid:([^\s"'()<>]+)""", re.IGNORECASE)
_SRC_RE = re.compile(r"""\b(?:src|background)\s*=\s*["']?([^"'\s>]+)""", re.IGNORECASE)


def _text_of(part: Message) -> str:
    """A text part decoded: its declared charset, else UTF-8, else Latin-1 (which never fails)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    for candidate in (charset, "utf-8"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeError, ValueError):
            continue
    return payload.decode("latin-1")


def _tidy_text(text: str) -> str:
    """Unix newlines, no trailing blanks on lines, no blank lines at either end."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")
