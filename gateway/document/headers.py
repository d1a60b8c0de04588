"""A part's headers, read one at a time as the rules of gateway/document/mime.py need them.

compat32 keeps every value as the raw string it arrived as; only the few whose decoded form
matters (Subject, the filename parameters) go through `email.policy.default`'s header parser,
each alone, and not even that where the parser would have nothing to do (`_plain_text`,
`_names_nothing`: shortcuts held to the parser's answers by tests/test_document_mime.py).
The readers fall back (to the raw text, or nothing) rather than raise on hostile input; the
bounds headers must keep before any of this reads them are `mime.check_headers`'.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import re
from email.message import Message


def content_id(part: Message) -> str:
    return strip_id(raw_header(part, "content-id"))


def strip_id(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


def raw_header(part: Message, name: str) -> str:
    """A header's raw value, unfolded; parsing it (policy.default) can fail on hostile input."""
    value = _source_value(part, name)
    return "" if value is None else " ".join(_without_surrogates(value).split())


def _source_value(part: Message, name: str) -> str | None:
    """The first `name` header's value as it arrived (compat32 stores it unparsed)."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return None


def _parsed(part: Message, name: str) -> object | None:
    """The first `name` header as `policy.default` would give it: the same structured header
    object (decoded encoded words, RFC 2231 parameters), built for this one header only."""
    value = _source_value(part, name)
    if value is None:
        return None
    return email.policy.default.header_fetch_parse(name, value)


def _without_surrogates(text: str) -> str:
    """Raw 8-bit header bytes come back from the parser as lone surrogates, which no store or
    mail can take (a message with them was refused with 451 over and over): read them as the
    UTF-8 they usually are, anything else as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def header_text(part: Message, name: str) -> str:
    """A header decoded for people (encoded words), on one line; raw text if decoding fails."""
    plain = _plain_text(_source_value(part, name))
    if plain is not None:
        return plain
    try:
        value = _parsed(part, name)
        text = "" if value is None else str(value)
    except Exception:
        raw = raw_header(part, name)
        try:
            text = str(email.header.make_header(email.header.decode_header(raw)))
        except Exception:
            text = raw
    return " ".join(_without_surrogates(text).split())


def _plain_text(value: str | None) -> str | None:
    """policy.default's reading of an unstructured header, for a value that leaves it nothing
    to do (ASCII without encoded words or line breaks: it would hand back the text itself),
    on one line; None for any other value, which it reads."""
    if value is None:
        return ""
    if not value.isascii() or "=?" in value or "\r" in value or "\n" in value:
        return None
    return " ".join(value.split())


def _names_nothing(part: Message) -> bool:
    """Whether neither Content-Disposition nor Content-Type can hold a filename or name
    parameter: every parser of them finds a parameter by its lower-cased name, so a header
    whose lower-cased text lacks "name" has none (RFC 2231's "filename*0*" has it too)."""
    for header in ("content-disposition", "content-type"):
        value = _source_value(part, header)
        if value is not None and "name" in value.lower():
            return False
    return True


def filename(part: Message) -> str | None:
    if _names_nothing(part):
        return None
    name = _param(part, "content-disposition", "filename") or _param(part, "content-type", "name")
    if not name:
        try:
            # The older API finds names the structured header gives up on (e.g. unquoted).
            name = part.get_filename()
        except Exception:
            return None
    if not name:
        return None
    # Some clients send the sender's full path ("C:\Users\ann\report.pdf"); only the name counts.
    name = re.split(r"[\\/]", str(name))[-1]
    name = "".join(c if c.isprintable() else " " for c in name)
    name = " ".join(name.split())[:255]
    return name or None


def _param(part: Message, header: str, name: str) -> str | None:
    """A decoded header parameter (RFC 2231, encoded words) as policy.default parses it.

    Preferred to get_filename(), which strips <angle brackets> off a name like "<scan>.pdf".
    """
    try:
        value = _parsed(part, header)
        params = getattr(value, "params", None) or {}
        found = params.get(name)
    except Exception:
        return None
    return str(found) if found else None
