"""The fuzz targets: each feeds bytes to one parser and allows only its documented error."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from gateway.callbacks.webhook import json_depth
from gateway.carrier.models import MAX_NESTING, CarrierFax, PayloadError, unflatten_query
from gateway.document.mime import DocumentError, extract
from gateway.numbers import NumberError, parse_fax_number


def mime(data: bytes) -> None:
    """A mail message: extract() raises DocumentError and nothing else."""
    with contextlib.suppress(DocumentError):
        extract(data)


def webhook(data: bytes) -> None:
    """A webhook body, as the endpoint reads it: too deep or not JSON is refused first, then
    the carrier's record raises PayloadError and nothing else."""
    if json_depth(data) > MAX_NESTING:
        return
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(payload, dict):
        return
    with contextlib.suppress(PayloadError):
        CarrierFax.from_api(payload)


def webhook_query(data: bytes) -> None:
    """A GET webhook's query string: unflatten_query raises PayloadError and nothing else."""
    pairs = parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True)
    try:
        fax = unflatten_query(pairs)
    except PayloadError:
        return
    with contextlib.suppress(PayloadError):
        CarrierFax.from_api(fax)


def number(data: bytes) -> None:
    """A fax number as typed into an address: NumberError and nothing else, in both modes."""
    text = data.decode("utf-8", "replace")
    for strict in (True, False):
        with contextlib.suppress(NumberError):
            parse_fax_number(text, strict=strict)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mime": mime,
    "webhook": webhook,
    "webhook_query": webhook_query,
    "number": number,
}
