"""Email addresses as the gateway accepts them: exactly one plain addr-spec, nothing else;
and, for the From of the mail it sends, one mailbox that may carry a display name.

Shared by the configuration (allowed senders, report copies, relay.from_address), the SMTP
policy and the mail the gateway builds, so an address is judged the same way everywhere.
Envelope addresses (MAIL FROM, RCPT TO, Return-Path) are always the bare addr-spec.
"""

from __future__ import annotations

import unicodedata
from email.errors import HeaderParseError
from email.headerregistry import Address


def clean_address(address: str) -> str:
    """`address` if it is exactly one plain addr-spec, else ValueError."""
    if not isinstance(address, str) or any(c in address for c in "\r\n\0"):
        raise ValueError(f"{address!r} is not an email address: contains a line break")
    text = address.strip()
    if not text or any(c.isspace() or unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"{address!r} is not an email address")
    try:
        parsed = Address(addr_spec=text)
    except (ValueError, IndexError, HeaderParseError) as exc:
        # HeaderParseError is no ValueError: callers catching ValueError must still see it.
        raise ValueError(f"{address!r} is not an email address: {exc}") from None
    if not parsed.username or not parsed.domain or parsed.addr_spec != text:
        raise ValueError(f"{address!r} is not a single plain email address")
    return text


MAX_DISPLAY_NAME_CHARS = 100
# RFC 5322 "specials" that an unquoted display name cannot contain ('.' is tolerated there, as
# the obsolete phrase syntax and every mail client allow: "J. Smith <j@example.com>").
_SPECIALS = set('()<>[]:;@\\,"')
# Characters that move or hide text (bidi embeddings, overrides, isolates and marks): a From
# could display as a name it is not. The set gateway/mailout/message.py strips from subjects.
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def split_mailbox(text: str) -> tuple[str, str]:
    """(display name, addr-spec) of one From mailbox: "addr", "<addr>" or "Name <addr>".

    The name may be quoted ('"Acme, Fax Desk" <fax@example.com>', with \\" and \\\\ escapes);
    unquoted it is plain words. Refused with ValueError: a line break or control character
    anywhere, a second address, comments, groups, anything after the '>', a name with bidi
    controls or longer than MAX_DISPLAY_NAME_CHARS. The name comes back with its runs of
    spaces collapsed; the email package quotes or encodes it when the header is written.
    """
    if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
        raise ValueError(f"{text!r} is not an email address: contains a line break")
    stripped = text.strip()
    if not stripped.endswith(">"):
        if "<" in stripped:
            raise ValueError(f"{text!r} is not an email address: nothing may follow the '>'")
        return "", clean_address(stripped)
    opening = stripped.rfind("<")
    if opening < 0:
        raise ValueError(f"{text!r} is not an email address: '>' without '<'")
    try:
        address = clean_address(stripped[opening + 1 : -1])
    except ValueError:
        raise ValueError(f"{text!r} is not an email address") from None
    name = _display_name(text, stripped[:opening].strip())
    return name, address


def clean_mailbox(text: str) -> str:
    """`text` as one From mailbox, normalised: "addr" or "Name <addr>" (name quoted if needed)."""
    name, address = split_mailbox(text)
    return str(Address(display_name=name, addr_spec=address))


def _display_name(text: str, phrase: str) -> str:
    if len(phrase) >= 2 and phrase.startswith('"') and phrase.endswith('"'):
        name = _unquote(text, phrase[1:-1])
    else:
        if "<" in phrase or ">" in phrase:
            raise ValueError(f"{text!r} is not an email address: more than one '<address>'")
        bad = sorted(_SPECIALS.intersection(phrase))
        if bad:
            raise ValueError(
                f"{text!r} is not an email address: put a display name with {''.join(bad)!r} "
                'in double quotes ("Name" <addr>)'
            )
        name = phrase
    for char in name:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn"):
            raise ValueError(
                f"{text!r} is not an email address: control character in the display name"
            )
    name = " ".join(name.split())
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise ValueError(
            f"{text!r} is not an email address: display name longer than "
            f"{MAX_DISPLAY_NAME_CHARS} characters"
        )
    return name


def _unquote(text: str, inner: str) -> str:
    chars: list[str] = []
    escaped = False
    for char in inner:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise ValueError(f"{text!r} is not an email address: stray '\"' in the display name")
        else:
            chars.append(char)
    if escaped:
        raise ValueError(f"{text!r} is not an email address: display name ends in '\\'")
    return "".join(chars)
