"""Logging: structlog, JSON lines for journald, a readable console on a terminal, no secrets.

Context (an SMTP session id, a job id, a webhook id) is bound with `bind` from contextvars, so
every line written while handling one thing carries its id without passing loggers around.
Redaction is the last step before rendering: registered secret values, the signature of
presigned URLs, bearer tokens and the webhook token in request paths are replaced wholesale.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, reset_contextvars

__all__ = [
    "bind",
    "bound",
    "clear",
    "configure",
    "get_logger",
    "redact",
    "register_secrets",
]

REDACTED = "<SECRET>"

bind = bind_contextvars
clear = clear_contextvars


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """`values` bound to every line logged inside the block, as before it afterwards.

    structlog's bound_contextvars does the same by copying the whole context (every
    ContextVar of the task) on entry: ~20 us, twice per webhook. Resetting the tokens of the
    values set restores exactly what was there, each key's earlier value or none.
    """
    tokens = bind_contextvars(**values)
    try:
        yield
    finally:
        reset_contextvars(**tokens)


_secrets: set[str] = set()
_PATTERNS = [
    # AWS SigV4 / SigV2 query signatures and credentials of presigned URLs.
    re.compile(
        r"(?i)(X-Amz-Signature=|X-Amz-Credential=|X-Amz-Security-Token=|Signature=)[^&\s\"']+"
    ),
    # Authorization headers and bearer tokens.
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # The gateway's own signed media tokens and webhook path tokens.
    re.compile(r"(/media/)[A-Za-z0-9._~=-]+"),
    re.compile(r"(/webhooks/fax/)[^/?\s\"']+"),
    # password=..., api_key=... in free text.
    re.compile(
        r"(?i)((?:password|passwd|api_key|apikey|secret|token)[\"']?\s*[=:]\s*[\"']?)[^\s\"',&}]+"
    ),
]


# Every match of a pattern above contains one of these (in lower case): a value with none of
# them is left as it is without running a regex. Scanning every value of every line with the
# patterns (six scans, or one of them all joined) cost ~15 us a value, most of a line's cost.
_NEEDLES = (
    "signature=",
    "credential=",
    "token",
    "bearer",
    "/media/",
    "/webhooks/fax/",
    "passw",
    "api_key",
    "apikey",
    "secret",
)
_by_length: list[str] = []  # _secrets, longest first (a secret inside another goes second)


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never be logged, whatever key or message they hide in."""
    for value in values:
        if value and len(value) >= 4:
            _secrets.add(value)
    _by_length[:] = sorted(_secrets, key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _by_length:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    for needle in _NEEDLES:
        if needle in lowered:
            break
    else:
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


_SECRET_KEYS = {"password", "api_key", "authorization", "token", "webhook_token", "secret"}


# Written by the processors before redaction, never from outside data.
_OWN_KEYS = frozenset({"timestamp", "level"})


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key in _OWN_KEYS:
            continue
        if key.lower() in _SECRET_KEYS and value:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog (and the stdlib loggers of our libraries) once per process."""
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the stdlib; route their warnings through the same redaction and
    # stream so nothing (a boto3 debug line with a signature, say) escapes it.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for noisy in ("mail.log", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
