"""Errors of the carrier's REST API, as typed exceptions the rest of the gateway can act on.

The documented error body is `{"status": "error", "message": ..., "error_id": ...}`. Every
exception carries the HTTP status (None when no answer came), that message and error id, and
whether trying again may help (`transient`). The split follows the documentation's table:
401 and 422 mean the request itself is wrong and will be wrong again; 500 and network failures
may pass.
"""

from __future__ import annotations


class CarrierError(Exception):
    """The carrier did not do what was asked."""

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_id: str | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_id = error_id
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        parts = [self.message]
        if self.http_status is not None:
            parts.append(f"(HTTP {self.http_status})")
        if self.error_id:
            parts.append(f"[error_id {self.error_id}]")
        return " ".join(parts)


class AuthError(CarrierError):
    """401: the API key was refused. Never retried; the operator must fix the key."""


class NotFound(CarrierError):
    """404: no such fax (or no such route: a wrong base_url looks the same)."""


class Rejected(CarrierError):
    """422 (or another 4xx): the request is invalid; the message is meant for the user."""


class ServerError(CarrierError):
    """5xx: the carrier failed; it may work later."""

    transient = True


class CarrierUnavailable(CarrierError):
    """No answer: connection refused or reset, DNS failure, timeout. It may work later."""

    transient = True


class BadResponse(CarrierError):
    """A success status with a body that is not the documented JSON.

    Not transient: the same request would most likely be answered the same way, and for a
    POST the fax may already exist.
    """


# 4xx statuses that describe a momentary condition rather than a wrong request.
_TRANSIENT_CLIENT_STATUSES = frozenset({408, 425, 429})


def error_for_status(status: int, message: str, error_id: str | None = None) -> CarrierError:
    """The exception for an HTTP error status and the message from its body."""
    if status == 401:
        return AuthError(message, http_status=status, error_id=error_id)
    if status == 403:
        # Not in the documentation; a refused key on some routes is the likeliest meaning, and
        # retrying cannot help, so it is treated like 401.
        return AuthError(message, http_status=status, error_id=error_id)
    if status == 404:
        return NotFound(message, http_status=status, error_id=error_id)
    if status in _TRANSIENT_CLIENT_STATUSES:
        return CarrierError(message, http_status=status, error_id=error_id, transient=True)
    if 400 <= status < 500:
        return Rejected(message, http_status=status, error_id=error_id)
    if status >= 500:
        return ServerError(message, http_status=status, error_id=error_id)
    # 1xx/3xx: redirects are not followed (a POST must not turn into a GET), so a wrong
    # base_url pointing at a redirect ends here.
    return BadResponse(message, http_status=status, error_id=error_id)


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same request again later may succeed."""
    return isinstance(exc, CarrierError) and exc.transient


def user_message(exc: CarrierError) -> str:
    """One line for a person at a terminal or in a notification mail."""
    if isinstance(exc, AuthError):
        return f"the carrier refused the API key ({exc}); check voxtelesys.api_key"
    if isinstance(exc, CarrierUnavailable):
        return f"the carrier could not be reached: {exc.message}"
    if isinstance(exc, ServerError):
        return f"the carrier failed: {exc}"
    if isinstance(exc, Rejected):
        return f"the carrier rejected the request: {exc.message}"
    return str(exc)
