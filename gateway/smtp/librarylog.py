"""aiosmtpd's own log lines: the noise dropped, one client's warnings tallied (one JSON line,
then counts once a minute) instead of a plain-text line each."""

from __future__ import annotations

import logging

from gateway.ops.flood import Tally
from gateway.smtp.connections import client_key
from gateway.smtp.policy import client_ip

# aiosmtpd's warnings about one client's commands, by the words that start them.
_CLIENT_WARNINGS = {
    "%r unrecognised: %s": "unrecognised_command",
    "%r too many bogus commands": "too_many_bogus_commands",
    "%r aborted AUTH with '*'": "aborted_auth",
}


class QuietLibraryLog(logging.Filter):
    """aiosmtpd's own log lines that would be noise or a flood.

    It sets the deprecated Session.login_data after every successful AUTH and then warns about
    it: that tells an operator nothing. It warns about every unknown command and aborted AUTH,
    one plain-text line each, so a client reconnecting in a loop floods the log: those are
    tallied (one JSON line, then counts once a minute)."""

    def __init__(self) -> None:
        super().__init__()
        self.tally = Tally("smtp.client_warning", "smtp.client_warnings", level="info")

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _CLIENT_WARNINGS.get(str(record.msg))
        if kind is not None:
            args = record.args if isinstance(record.args, tuple) else ()
            peer = args[0] if args else None
            self.tally.add(kind, client=client_key(client_ip(peer)))
            return False
        return "login_data is deprecated" not in record.getMessage()


def quiet_library_log() -> QuietLibraryLog:
    mail_log = logging.getLogger("mail.log")
    for existing in mail_log.filters:
        if isinstance(existing, QuietLibraryLog):
            return existing
    quiet = QuietLibraryLog()
    mail_log.addFilter(quiet)
    return quiet
