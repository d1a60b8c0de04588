"""Handing one finished mail to the outside world: an SMTP relay, or a Maildir on disk.

A relay either takes a message or raises RelayError saying whether trying again can help. The
outbox (gateway/mailout/outbox.py) owns retries; nothing here retries or sleeps.

How SMTP answers are read:
- Before the envelope (connect, greeting, EHLO, STARTTLS, AUTH) a failure says something about
  the relay or our configuration, never about this message: it is temporary for the message
  (the outbox keeps it) and `relay_unavailable` (the outbox stops trying others for now). A
  refused password (535) belongs here: treating it as permanent would fail every mail until the
  operator notices, while mail that waits goes out once the password is fixed. Such failures
  are logged at error level because they need a person.
- From MAIL FROM on, the reply code decides: 5xx is permanent for this message, 4xx, a timeout
  or a lost connection temporary. Exception: 530 "authentication required" at MAIL FROM is the
  same configuration problem as a refused password.
- Some recipients refused and others accepted: the message went to the accepted ones, so it
  must not be sent to them again. RecipientsRefused lists both sides; the outbox retries only
  the recipients refused with 4xx and drops those refused with 5xx (logged).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import secrets
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from gateway.addresses import clean_address
from gateway.config import Config, RelayConfig
from gateway.fsutil import fsync_dir
from gateway.log import get_logger

log = get_logger(__name__)

# Reply codes that mean "you are not (properly) logged in": a configuration problem.
_AUTH_CODES = frozenset({530, 534, 535, 538})


class RelayError(Exception):
    """The relay did not take the message.

    `transient`: sending the same message again may work (a 4xx, a timeout, a relay that is
    down); False when it will fail the same way (a 5xx answer). The same direction as
    CarrierError.transient and StorageError.transient.
    `relay_unavailable`: no message can go out right now (down, refused login, TLS failure).
    `code` and `reply` are the server's answer when there was one.
    """

    def __init__(
        self,
        reason: str,
        *,
        transient: bool,
        code: int | None = None,
        reply: str = "",
        relay_unavailable: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.code = code
        self.reply = reply
        self.relay_unavailable = relay_unavailable

    def __str__(self) -> str:
        if self.code is not None:
            return f"{self.reason}: {self.code} {self.reply}".rstrip()
        return self.reason


class RecipientsRefused(RelayError):
    """Some or all recipients were refused; the message went to `accepted` (maybe none).

    `refused` maps each refused recipient to the (code, reply) it got. `transient` is false when
    every refusal was a 5xx: nothing is left to retry.
    """

    def __init__(self, accepted: Sequence[str], refused: Mapping[str, tuple[int, str]]) -> None:
        self.accepted = tuple(accepted)
        self.refused = dict(refused)
        details = "; ".join(f"{rcpt}: {code} {reply}" for rcpt, (code, reply) in refused.items())
        super().__init__(
            f"{len(self.refused)} recipient(s) refused ({details})",
            transient=any(code < 500 for code, _ in self.refused.values()),
        )

    @property
    def temporary(self) -> tuple[str, ...]:
        """Recipients worth another try (4xx or no answer)."""
        return tuple(r for r, (code, _) in self.refused.items() if code < 500)

    @property
    def permanently_refused(self) -> tuple[str, ...]:
        return tuple(r for r, (code, _) in self.refused.items() if code >= 500)

    def __str__(self) -> str:
        return self.reason


class Relay(Protocol):
    """Where mail goes out: `send` returns once the message is someone else's responsibility."""

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> None: ...

    async def check(self) -> None:
        """Raise RelayError with a readable reason if no mail could go out now."""
        ...


def _recipients(recipients: Sequence[str]) -> list[str]:
    """Validated, de-duplicated recipients; a malformed one is a permanent error."""
    if not recipients:
        raise RelayError("message has no recipients", transient=False)
    seen: set[str] = set()
    result: list[str] = []
    for recipient in recipients:
        try:
            address = clean_address(recipient)
        except ValueError as exc:
            raise RelayError(str(exc), transient=False) from None
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


# -- SMTP ---------------------------------------------------------------------------------------


class SmtpRelay:
    """Delivery over SMTP with aiosmtplib: one connection per message, TLS and AUTH as set.

    `tls_context` replaces the system trust store (a private CA, or a test CA); without it the
    relay's certificate is verified against the system's CAs, as it should be.
    """

    def __init__(
        self,
        relay: RelayConfig,
        *,
        local_hostname: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = relay
        self.local_hostname = local_hostname
        self.tls_context = tls_context

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.config
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.tls,
            # Explicit either way: None would mean "upgrade if offered", which makes the
            # behaviour depend on the server and fails on relays with private certificates.
            start_tls=cfg.starttls,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            timeout=cfg.timeout_seconds,
            local_hostname=self.local_hostname,
            tls_context=self.tls_context,
        )

    @property
    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def _connect(self) -> aiosmtplib.SMTP:
        """Connected, TLS'd and logged-in client, or RelayError(relay_unavailable)."""
        client = self._client()
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            log.error("relay.auth_failed", relay=self._where, code=exc.code, reply=exc.message)
            raise RelayError(
                f"relay {self._where} refused the login (check relay.username/password)",
                transient=True,
                code=exc.code,
                reply=exc.message,
                relay_unavailable=True,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO or STARTTLS refused. 4xx is a busy relay; 5xx (say 554 at the
            # greeting) means it will not take mail from us at all, which needs a person.
            if exc.code >= 500:
                log.error(
                    "relay.session_refused", relay=self._where, code=exc.code, reply=exc.message
                )
            raise RelayError(
                f"relay {self._where} refused the session",
                transient=True,
                code=exc.code,
                reply=exc.message,
                relay_unavailable=True,
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Refused connections, timeouts, lost connections, a server without STARTTLS or
            # AUTH although we are configured to use them, and TLS failures (a certificate we
            # cannot verify is a configuration problem, hence the error-level line).
            if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
                log.error("relay.tls_failed", relay=self._where, error=_text(exc))
            raise RelayError(
                f"relay {self._where} unreachable: {_text(exc)}",
                transient=True,
                relay_unavailable=True,
            ) from None
        return client

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        rcpts = _recipients(recipients)
        client = await self._connect()
        try:
            # The envelope takes the bare address; the From header keeps the display name.
            refused, _reply = await client.send_message(
                message, sender=self.config.envelope_sender, recipients=rcpts
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise RecipientsRefused(
                (), {e.recipient: (e.code, e.message) for e in exc.recipients}
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code in _AUTH_CODES:
                log.error("relay.auth_failed", relay=self._where, code=exc.code, reply=exc.message)
                raise RelayError(
                    f"relay {self._where} wants a login it did not get",
                    transient=True,
                    code=exc.code,
                    reply=exc.message,
                    relay_unavailable=True,
                ) from None
            raise RelayError(
                f"relay {self._where} refused the message",
                transient=exc.code < 500,
                code=exc.code,
                reply=exc.message,
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            # An internationalised address and a relay without SMTPUTF8: this message can never
            # go through this relay.
            raise RelayError(f"relay {self._where}: {exc.message}", transient=False) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # No final answer to DATA: the relay may or may not have the message. Sending again
            # risks a duplicate, not sending risks a loss; a duplicate report is the lesser evil.
            raise RelayError(
                f"relay {self._where} lost during delivery: {_text(exc)}", transient=True
            ) from None
        finally:
            await _quit(client)
        if refused:
            raise RecipientsRefused(
                [r for r in rcpts if r not in refused],
                {r: (resp.code, resp.message) for r, resp in refused.items()},
            )

    async def check(self) -> None:
        client = await self._connect()
        await _quit(client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    # After DATA was answered 250 the message is the relay's: a failing QUIT changes nothing.
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def _text(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPException):
        return exc.message or type(exc).__name__
    return str(exc) or type(exc).__name__


# -- Maildir ------------------------------------------------------------------------------------

_counter = itertools.count()


class MaildirRelay:
    """Delivery into a Maildir (demo, or a mailbox an IMAP server serves).

    Written as a real MDA does: a unique file in tmp/, fsync, rename into new/, fsync new/. One
    file per recipient, each starting with Return-Path (the envelope sender), Delivered-To and
    X-Original-To (the recipient), as Postfix's local delivery writes them: all recipients share
    one mailbox here, and those headers are how a reader tells whose copy a file is.
    """

    def __init__(self, path: Path, *, envelope_sender: str) -> None:
        self.path = path
        self.envelope_sender = clean_address(envelope_sender)
        self._hostname = (
            socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
        )

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        rcpts = _recipients(recipients)
        # Maildir files use the local line ending; the relay form (CRLF) is for the wire.
        body = message.as_bytes(policy=policy.default)
        await asyncio.to_thread(self._deliver_all, body, rcpts)

    def _deliver_all(self, body: bytes, recipients: list[str]) -> None:
        delivered: list[str] = []
        for recipient in recipients:
            try:
                self._deliver(body, recipient)
            except OSError as exc:
                if not delivered:
                    raise RelayError(
                        f"cannot write to maildir {self.path}: {exc}",
                        transient=True,
                        relay_unavailable=exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES),
                    ) from None
                # Those already written must not be written twice: retry only the rest.
                rest = recipients[len(delivered) :]
                raise RecipientsRefused(delivered, {r: (451, str(exc)) for r in rest}) from None
            delivered.append(recipient)

    def _deliver(self, body: bytes, recipient: str) -> None:
        header = (
            f"Return-Path: <{self.envelope_sender}>\n"
            f"Delivered-To: {recipient}\n"
            f"X-Original-To: {recipient}\n"
        ).encode()
        tmp_dir, new_dir = self.path / "tmp", self.path / "new"
        for directory in (tmp_dir, new_dir, self.path / "cur"):
            directory.mkdir(parents=True, exist_ok=True)
        name = self._unique_name()
        tmp = tmp_dir / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(header)
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, new_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(new_dir)

    def _unique_name(self) -> str:
        # The modern Maildir name: seconds, then microseconds, pid, a counter and randomness,
        # so two deliveries in the same microsecond by the same process still differ.
        now = time.time()
        seconds = int(now)
        micro = int((now - seconds) * 1_000_000)
        return (
            f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}"
            f".{self._hostname}"
        )

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        try:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            probe = self.path / "tmp" / f".probe-{secrets.token_hex(6)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RelayError(
                f"maildir {self.path} is not writable: {exc}",
                transient=True,
                relay_unavailable=True,
            ) from None


def create_relay(config: Config, *, tls_context: ssl.SSLContext | None = None) -> Relay:
    """The relay `config.relay.backend` names."""
    relay = config.relay
    if relay.backend == "maildir":
        assert relay.maildir is not None  # the config validator requires it for this backend
        return MaildirRelay(relay.maildir, envelope_sender=relay.envelope_sender)
    return SmtpRelay(relay, local_hostname=config.smtp.hostname, tls_context=tls_context)
