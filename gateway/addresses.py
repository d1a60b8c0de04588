"""Email addresses as the gateway accepts them: exactly one plain addr-spec, nothing else.

Shared by the configuration (allowed senders, report copies), the SMTP policy and the mail the
gateway builds, so an address is judged the same way everywhere.
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
