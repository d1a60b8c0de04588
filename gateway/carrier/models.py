"""The carrier's fax object, read leniently from REST responses and webhooks alike.

The documentation is loose about types: REST responses give `pages` and `duration` as numbers,
the webhook table calls them strings; `links` is "an object" whose field is written
`links[].media`; `error.code` is a number in responses and "string" in the webhook table.
`CarrierFax.from_api` accepts every one of those readings, ignores keys it does not know, and raises
PayloadError only when a field we cannot work without is missing or unusable.

GET-style webhooks carry the same fields as query parameters. The documentation does not say
how nested fields are written there; the sandbox uses the bracket convention of common web
frameworks (`error[code]=5109`, `links[0][media]=https://...`), and `from_api` also accepts
dotted keys (`error.code`), so both are read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.carrier.faxerrors import FaxErrorInfo, describe
from gateway.carrier.status import Outcome, classify


class PayloadError(ValueError):
    """A carrier payload lacks a field we need, or has it in an unusable form."""


# No carrier payload nests more than a few levels (`links[0][media]`). Python's parsers, and our
# own `_lists`, recurse once per level: a hostile `a[b][b]...` 2,500 levels deep (or `[` x 30,000
# in JSON) raised RecursionError, a 500 and a 3,000-line traceback per request.
MAX_NESTING = 32


@dataclass(frozen=True)
class CarrierFax:
    """One fax as the carrier describes it. Numbers are as the carrier wrote them."""

    id: str
    direction: str
    to: str
    from_: str
    status: str
    created_at: datetime | None = None
    modified_at: datetime | None = None
    url: str | None = None
    pages: int | None = None
    duration: int | None = None
    attempts: int | None = None
    error_code: int | None = None
    error_description: str | None = None
    media_url: str | None = None
    time: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> CarrierFax:
        """Read a fax from a REST response, a webhook body, or webhook query parameters."""
        if not isinstance(data, Mapping):
            raise PayloadError(f"expected a JSON object, got {type(data).__name__}")
        if any(("[" in key or "." in key) for key in data if isinstance(key, str)):
            data = unflatten_query(data.items())
        error_code, error_description = _error(data.get("error"))
        return cls(
            id=_required_text(data, "id"),
            direction=_required_text(data, "direction").lower(),
            to=_required_text(data, "to"),
            # An inbound caller may withhold its number ("anonymous", or nothing at all): a fax
            # must never be refused for that, so `from` is kept as given, "" when absent.
            from_=_optional_text(data.get("from")) or "",
            status=_required_text(data, "status"),
            created_at=_timestamp(data.get("created_at")),
            modified_at=_timestamp(data.get("modified_at")),
            url=_optional_text(data.get("url")),
            pages=_count(data.get("pages")),
            duration=_count(data.get("duration")),
            attempts=_count(data.get("attempts")),
            error_code=error_code,
            error_description=error_description,
            media_url=_media_url(data.get("links")),
            time=_optional_text(data.get("time")),
        )

    @property
    def has_error(self) -> bool:
        return self.error_code is not None or self.error_description is not None

    @property
    def to_e164(self) -> str:
        """The recipient with a leading '+' (the carrier writes digits only)."""
        return _e164(self.to)

    @property
    def from_e164(self) -> str:
        return _e164(self.from_)

    @property
    def error_info(self) -> FaxErrorInfo | None:
        """Our description of the fax error, or None when the fax has no error."""
        if not self.has_error:
            return None
        info = describe(self.error_code)
        if self.error_code is None and self.error_description:
            return info._replace(description=self.error_description)
        return info

    def outcome(self, success_statuses: Iterable[str]) -> Outcome:
        return classify(self.status, self.has_error, success_statuses)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (dates as ISO 8601), e.g. for `--json` output."""
        data = asdict(self)
        data["from"] = data.pop("from_")
        for key in ("created_at", "modified_at"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data


def unflatten_query(items: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Nest flat parameters: `error[code]` or `error.code` -> {"error": {"code": ...}}.

    Numeric parts make lists (`links[0][media]`); empty brackets (`links[][media]`) are read
    as the first element, which is all a webhook carries. A repeated key keeps its last value.
    A key nested deeper than MAX_NESTING is a PayloadError.
    """
    root: dict[str, Any] = {}
    for raw_key, value in items:
        key = str(raw_key)
        parts = _key_parts(key)
        if not parts:
            continue
        if len(parts) > MAX_NESTING:
            shown = key if len(key) <= 30 else key[:27] + "..."
            raise PayloadError(f"{shown}: key nested deeper than {MAX_NESTING} levels")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    # The top level stays an object even when every key is a number (`?0=a`, `{".1": ...}`):
    # a payload is a fax, never a list (found by the webhook fuzz target).
    return {key: _lists(value) for key, value in root.items()}


_KEY_PART = re.compile(r"\[([^\]]*)\]|\.?([^.\[\]]+)")


def _key_parts(key: str) -> list[str]:
    parts: list[str] = []
    for match in _KEY_PART.finditer(key):
        part = match.group(1) if match.group(1) is not None else match.group(2)
        # "links[][media]": an empty index is the first (and in webhooks only) element.
        parts.append(part if part != "" else "0")
    return parts


def _lists(node: Any) -> Any:
    """Dicts whose keys are all small ASCII numbers become lists, in index order."""
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    # str.isdigit() also holds for "²" and for 5000-digit strings, which int() refuses.
    if converted and all(_is_index(key) for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 6


def _required_text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        raise PayloadError(f"missing {key}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{key} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise PayloadError(f"{key} is empty")
    return text


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list | bool):
        return None
    text = str(value).strip()
    return text or None


# Pages, seconds, attempts and error codes are far below this; a larger value is nonsense, and
# would not even fit a store column (SQLite integers end at 2**63).
_MAX_COUNT = 2**31 - 1


def _count(value: Any) -> int | None:
    """A non-negative whole number given as number or string; anything else is unknown."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, int | float) or not math.isfinite(number) or number < 0:
            return None
    except (ValueError, OverflowError):  # an int too big for a float
        return None
    # A fractional duration is rounded; a fractional page count does not occur.
    whole = round(number) if isinstance(number, float) else int(number)
    return whole if whole <= _MAX_COUNT else None


def _timestamp(value: Any) -> datetime | None:
    """ISO 8601 (with 'Z' or an offset; naive means UTC) or Unix seconds/milliseconds."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = value / 1000 if value > 10**11 else value
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    # ASCII and short: int() refuses "²" and strings of thousands of digits.
    if text.isascii() and text.isdigit() and len(text) <= 20:
        return _timestamp(int(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error(value: Any) -> tuple[int | None, str | None]:
    """(code, description) of an `error` object; a JSON string is decoded first."""
    if value is None or value == "" or value == {}:
        return None, None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None, value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, None) if 0 <= value <= _MAX_COUNT else (None, f"error {value}")
    if not isinstance(value, Mapping):
        return None, _optional_text(value)
    code: int | None = None
    raw_code = value.get("code")
    if raw_code is not None and not isinstance(raw_code, bool):
        try:
            code = int(str(raw_code).strip())
        except ValueError:
            code = None
        if code is not None and not 0 <= code <= _MAX_COUNT:
            code = None
    description = _optional_text(value.get("description"))
    if code is None and description is None and raw_code is not None:
        description = f"error {raw_code}"
    return code, description


def _media_url(value: Any) -> str | None:
    """`links.media`, where links is an object, a list of objects, or a JSON string of one."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                return _media_url(json.loads(text))
            except ValueError:
                return None
        # A bare URL in `links` can only be the media link.
        return text if text.startswith(("http://", "https://")) else None
    if isinstance(value, Mapping):
        return _optional_text(value.get("media"))
    if isinstance(value, list):
        for item in value:
            found = _media_url(item) if isinstance(item, Mapping) else None
            if found:
                return found
    return None


def _e164(number: str) -> str:
    """'+' before a number of digits; anything else ("anonymous", "") is returned as is."""
    return "+" + number if number.isdigit() else number
