"""Every SMTP reply the gateway gives, and the names of the reasons a message is refused.

Replies carry RFC 3463 enhanced status codes because EHLO advertises ENHANCEDSTATUSCODES;
`with_enhanced_code` adds one to the replies aiosmtpd writes by itself ("250 OK", "503 Error:
need RCPT command"). Reason names are stable words for log lines and metrics labels.
"""

from __future__ import annotations

import enum
import re


class Reason(enum.StrEnum):
    """Why a message, sender or recipient was refused (or why it was accepted)."""

    ACCEPTED = "accepted"
    # MAIL FROM
    AUTH_REQUIRED = "auth_required"
    NETWORK_DENIED = "network_denied"
    SENDER_DENIED = "sender_denied"
    SENDER_NOT_USER = "sender_not_user"
    # RCPT TO
    RELAY_DENIED = "relay_denied"
    BAD_NUMBER = "bad_number"
    BLOCKED_PREFIX = "blocked_prefix"
    PREMIUM_RATE = "premium_rate"
    COUNTRY_DENIED = "country_denied"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    DAILY_LIMIT = "daily_limit"
    UNKNOWN_OPTION = "unknown_option"
    # DATA
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    NO_DOCUMENT = "no_document"
    UNSUPPORTED = "unsupported"
    CORRUPT = "corrupt"
    TOO_MANY_PAGES = "too_many_pages"
    MALFORMED = "malformed"
    # the numbers in the Subject of the shared address (smtp.subject_address)
    NO_SUBJECT_NUMBER = "no_subject_number"
    SUBJECT_NUMBERS_REFUSED = "subject_numbers_refused"
    TOO_COSTLY = "too_costly"
    INTERNAL_ERROR = "internal_error"
    NO_STORAGE = "no_storage"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    # AUTH
    AUTH_FAILED = "auth_failed"
    AUTH_LOCKED = "auth_locked"
    AUTH_ACCOUNT_LOCKED = "auth_account_locked"
    AUTH_BUSY = "auth_busy"
    # the connection
    TOO_MANY_CONNECTIONS = "too_many_connections"
    JUNK_COMMANDS = "junk_commands"
    IDLE = "idle"


SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
DUPLICATE_RECIPIENT = "250 2.1.5 Recipient OK (same number as an earlier recipient: one fax)"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
# 454 rather than 535-and-close: the lockout ends by itself, so the failure is temporary, and a
# client that corrected its password learns to retry later instead of giving up. The password is
# not even checked while locked out, so the reply tells a guesser nothing.
AUTH_LOCKED = "454 4.7.0 Too many failed logins from your address, try again later"
AUTH_ACCOUNT_LOCKED = "454 4.7.0 Too many failed logins for this user, try again later"
# Waited too long for a free slot among the password checks in progress (per address, overall).
AUTH_BUSY = "454 4.7.0 Too many logins in progress, try again later"
AUTH_UNAVAILABLE = "502 5.5.1 AUTH not available"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
RELAY_DENIED = "550 5.7.1 Relaying denied"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, try again later"
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
BUSY = "451 4.3.2 Too many messages being processed at once, try again later"
BUSY_FROM_CLIENT = "451 4.3.2 Too many messages from your address in progress, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
# In place of the greeting when a connection cap is reached; then the connection is closed.
TOO_MANY_CONNECTIONS_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Server busy: too many connections, try again later"
# Postfix's junk commands (NOOP, RSET, HELP, VRFY) past the limit, or no progress for too long.
TOO_MANY_JUNK_COMMANDS = "421 4.7.0 Too many commands without progress, closing connection"
IDLE_TOO_LONG = "421 4.7.0 Too long without progress, closing connection"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_TEXT = 400


def one_line(text: str) -> str:
    """Text fit for a reply line: no CR/LF or control characters, bounded length."""
    # Lone surrogates (undecodable bytes an SMTPUTF8 client sent) could not be written out.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= _MAX_TEXT else flat[: _MAX_TEXT - 3] + "..."


def network_denied(address: str) -> str:
    return f"550 5.7.1 Not allowed to send from {one_line(address)}"


def sender_denied(sender: str, why: str = "is not allowed to send faxes") -> str:
    return f"550 5.7.1 Sender <{one_line(sender)}> {why}"


def bad_sender_syntax(sender: str, why: str) -> str:
    return f"553 5.1.7 Sender <{one_line(sender)}> {one_line(why)}"


def sender_not_user(user: str, sender: str) -> str:
    return f"550 5.7.1 User {one_line(user)} may not send as <{one_line(sender)}>"


def relay_denied(domain: str) -> str:
    return f"{RELAY_DENIED}: faxes are addressed as <number>@{one_line(domain)}"


def bad_number(reason: str) -> str:
    return f"550 5.1.1 {one_line(reason)}"


def destination_refused(reason: str) -> str:
    return f"550 5.7.1 {one_line(reason)}"


def daily_limit(sender: str, limit: int) -> str:
    # 4xx, not 5xx: the limit is per 24 hours, so the same message goes through once older faxes
    # age out of the window; a sending MTA keeps it queued and retries instead of bouncing it.
    return (
        f"452 4.7.1 Daily limit of {limit} faxes reached for <{one_line(sender)}>, try again later"
    )


def daily_limit_user(user: str, limit: int) -> str:
    return (
        f"452 4.7.1 Daily limit of {limit} faxes reached for user {one_line(user)}, try again later"
    )


def bad_option(reason: str) -> str:
    return f"501 5.1.3 {one_line(reason)}"


_CODES = re.compile(r"^[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3} )?")


def reply_text(reply: str) -> str:
    """The words of a one-line reply without its codes ("550 5.1.1 Bad" -> "Bad")."""
    return _CODES.sub("", reply, count=1)


def multiline(code: str, lines: list[str]) -> str:
    """One reply of several lines ("554-5.1.1 a", "554 5.1.1 b"); `code` is "554 5.1.1"."""
    basic, enhanced = code.split(" ", 1)
    last = len(lines) - 1
    return "\r\n".join(
        f"{basic}{' ' if i == last else '-'}{enhanced} {one_line(line)}"
        for i, line in enumerate(lines)
    )


# Refused numbers listed one per line in a reply; the rest are counted.
MAX_LISTED = 20


def _listed(refused: list[tuple[str, str]], prefix: str = "") -> list[str]:
    lines = [f"{prefix}{number}: {why}" for number, why in refused[:MAX_LISTED]]
    if len(refused) > MAX_LISTED:
        lines.append(f"and {len(refused) - MAX_LISTED} more numbers refused")
    return lines


NO_SUBJECT_NUMBER = (
    "554 5.1.1 No fax number in the Subject: write the numbers first, as in"
    ' "12015550123 Quarterly report"'
)


def subject_numbers_refused(
    refused: list[tuple[str, str]], *, temporary: bool, partial: bool
) -> str:
    """DATA refused for the numbers of the Subject, one line per number (as written, and why).

    `temporary`: every refusal can pass later (the daily limit), so 452 and the client may
    try again; otherwise 554. `partial`: smtp.subject_partial is on and no number passed.
    """
    code = "452 4.7.1" if temporary else "554 5.1.1"
    if partial:
        head = "No number in the Subject can be faxed; nothing was faxed"
    else:
        head = (
            "Nothing was faxed: a message to the shared address is faxed to all the numbers"
            " of its Subject or to none, and these were refused"
        )
    return multiline(code, [head, *_listed(refused)])


def queued_except(job_id: str, refused: list[tuple[str, str]]) -> str:
    """250 for a message faxed to some of its Subject's numbers (smtp.subject_partial)."""
    lines = _listed(refused, "Not faxed to ")
    return multiline("250 2.0.0", [*lines, f"queued as {job_id}"])


def too_big(limit: int) -> str:
    return f"552 5.3.4 Message too big: the limit is {limit} bytes"


def document_rejected(code: str, message: str) -> str:
    """`code` is "554 5.6.0" or "554 5.3.4"; `message` is the document module's explanation."""
    return f"{code} {one_line(message)}"


def queued(job_id: str) -> str:
    return f"250 2.0.0 queued as {job_id}"


# Replies aiosmtpd writes itself that deserve a better text than the enhanced code alone, and
# the reason to log for them (these never reach our handler). TOO_BIG ones are rewritten with
# the configured limit.
LIBRARY_REPLIES: dict[str, tuple[str | None, Reason | None]] = {
    "552 Error: Too much mail data": (None, Reason.TOO_BIG),
    "552 Error: message size exceeds fixed maximum message size": (None, Reason.TOO_BIG),
    "500 Line too long (see RFC5321 4.5.3.1.6)": (
        "500 5.5.2 Line too long (RFC 5321 allows 1000 characters per line)",
        Reason.LINE_TOO_LONG,
    ),
}

# RFC 3463 code for each basic reply code aiosmtpd uses without one.
_ENHANCED: dict[str, str] = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.1.5",
    "421": "4.3.2",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_BASIC = re.compile(r"^([245]\d\d)([ -])(.*)$", re.DOTALL)


def with_enhanced_code(reply: str) -> str:
    """Add an enhanced status code to a 2xx/4xx/5xx reply that has none; others unchanged."""
    if _HAS_ENHANCED.match(reply):
        return reply
    match = _BASIC.match(reply)
    if match is None:
        return reply
    code, separator, text = match.groups()
    enhanced = _ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{separator}{enhanced} {text}".rstrip()
