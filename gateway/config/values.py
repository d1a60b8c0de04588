"""The kinds of value a key holds, each checked as it is read (listen addresses, fax numbers,
URLs, email addresses and mailboxes), and Section, the base every section shares.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict

from gateway.addresses import clean_address, clean_mailbox, split_mailbox
from gateway.numbers import NumberError, parse_fax_number


class Address(NamedTuple):
    """A listen address, written "host:port" or "[v6]:port" in the file."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_address(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not an address: expected '[ipv6]:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not an address: expected 'host:port'")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not an address: port must be a number from 0 to 65535")
    if not host:
        raise ValueError(f"{value!r} is not an address: host is missing")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        label_ok = all(part and part.replace("-", "").isalnum() for part in host.split("."))
        if not label_ok:
            raise ValueError(f"{value!r} is not an address: bad host {host!r}") from None
    return Address(host, int(port))


ListenAddress = Annotated[Address, BeforeValidator(_parse_address)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _e164(value: Any) -> Any:
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return value
    try:
        # Configured numbers are the operator's own and must be real: always strict.
        return parse_fax_number(value, "US" if not value.startswith("+") else "ZZ")
    except NumberError as exc:
        raise ValueError(str(exc)) from None


FaxNumber = Annotated[str, BeforeValidator(_e164)]


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    return value.rstrip("/")


AbsoluteUrl = Annotated[
    str, BeforeValidator(lambda v: _absolute_url(v) if isinstance(v, str) else v)
]


def checked_email(value: str) -> str:
    """`value` if it is an email address every mail the gateway builds can carry."""
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c in value for c in " \r\n<>,;"):
        raise ValueError(f"{value!r} is not an email address")
    # The same test every mail's addresses pass when it is built: an address that passed here
    # but not there would fail each report at run time instead of the load.
    try:
        clean_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an email address") from None
    return value


EmailAddress = Annotated[
    str, BeforeValidator(lambda v: checked_email(v) if isinstance(v, str) else v)
]


def _mailbox(value: str) -> str:
    # A From may carry a display name ("Fax Gateway <fax@example.com>"): what every operator
    # writes. Kept normalised (name quoted if it needs it) so build_message reads it back the
    # same; the bare address inside is held to checked_email's rule like every other address.
    try:
        _name, address = split_mailbox(value)
        checked_email(address)
        return clean_mailbox(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


# Where the configuration takes the From of the gateway's mail: an addr-spec or `Name <addr>`.
# Envelope addresses stay EmailAddress.
FromAddress = Annotated[str, BeforeValidator(lambda v: _mailbox(v) if isinstance(v, str) else v)]


class Section(BaseModel):
    """A section of the file: frozen, and an unknown key in it is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
