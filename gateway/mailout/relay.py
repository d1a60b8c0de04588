"""Handing one finished mail to the outside world: an SMTP relay, or a Maildir on disk.

A relay either takes a message or raises RelayError saying whether trying again can help. The
outbox (gateway/mailout/outbox.py) owns retries; nothing here retries or sleeps. A message is
handed over as the bytes the outbox stored (the wire form: CRLF line ends), never parsed and
generated again on the way out.

The SMTP relay keeps its session for the next message until `close()`, as Postfix's on-demand
connection cache does while a destination has a backlog: the outbox sends what is due over one
session and closes it when a pass finds nothing more to send. A kept session is checked with
RSET before it is used (a session the relay closed meanwhile costs one new connection, not the
message), is used for new messages `SESSION_MAX_SECONDS` at most, and is dropped after any
error. Connecting, EHLO, STARTTLS, AUTH and QUIT were most of the work of each mail.

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
import contextlib
import errno
import itertools
import os
import secrets
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from email import policy
from email.generator import BytesGenerator
from email.parser import BytesParser
from io import BytesIO
from pathlib import Path
from typing import Protocol

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from gateway.addresses import clean_address
from gateway.config import Config, RelayConfig
from gateway.fsutil import fsync_dir
from gateway.log import get_logger

log = get_logger(__name__)

# Reply codes that mean "you are not (properly) logged in": a configuration problem.
_AUTH_CODES = frozenset({530, 534, 535, 538})

# A kept session is used for new messages this long after it was opened at most (Postfix:
# smtp_connection_reuse_time_limit, 300 s), then replaced by a new one.
SESSION_MAX_SECONDS = 300.0


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
    """Where mail goes out: `send` returns once the message (its wire form: CRLF line ends)
    is someone else's responsibility."""

    async def send(self, message: bytes, recipients: Sequence[str]) -> None: ...

    async def check(self) -> None:
        """Raise RelayError with a readable reason if no mail could go out now."""
        ...

    async def close(self) -> None:
        """Let go of what is kept between messages (a session with the relay): the sender
        has nothing more to send for now."""
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
    """Delivery over SMTP with aiosmtplib, TLS and AUTH as set, the session kept between
    messages until close() (see the module docstring). One message at a time: a second send
    waits.

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
        self._lock = asyncio.Lock()
        # The session kept for the next message, and when it was opened.
        self._kept: aiosmtplib.SMTP | None = None
        self._kept_since = 0.0
        # Sessions opened, for the tests and benchmarks that count them.
        self.sessions_opened = 0

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
            if client.is_ehlo_or_helo_needed:
                # Now, not at MAIL: what the relay offers (8BITMIME) decides what we send.
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
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
        self.sessions_opened += 1
        return client

    async def send(self, message: bytes, recipients: Sequence[str]) -> None:
        rcpts = _recipients(recipients)
        async with self._lock:
            client = await self._session()
            try:
                refused = await self._transaction(client, message, rcpts)
            except asyncio.CancelledError:
                client.close()
                raise
            except Exception:
                # Whatever went wrong, the next message starts on a fresh session.
                await _quit(client)
                raise
            self._keep(client)
        if refused:
            raise RecipientsRefused(
                [r for r in rcpts if r not in refused],
                {r: (resp.code, resp.message) for r, resp in refused.items()},
            )

    async def _session(self) -> aiosmtplib.SMTP:
        """The kept session if it is still good (RSET answered), else a new one."""
        client, self._kept = self._kept, None
        if client is not None:
            if client.loop is not asyncio.get_running_loop():
                _drop(client)  # kept by a loop that has ended
            elif client.is_connected and time.monotonic() - self._kept_since < SESSION_MAX_SECONDS:
                try:
                    await client.rset()
                    return client
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    # The relay closed it meanwhile (its own idle timeout, a restart).
                    _drop(client)
            else:
                await _quit(client)
        client = await self._connect()
        self._kept_since = time.monotonic()
        return client

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._kept = client

    async def close(self) -> None:
        """QUIT the kept session, if there is one (the outbox has nothing more to send, or
        the gateway stops)."""
        async with self._lock:
            client, self._kept = self._kept, None
            if client is not None:
                await _quit(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, message: bytes, rcpts: list[str]
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        """MAIL, RCPT, DATA on `client`: the refused recipients (some were accepted), or a
        RelayError."""
        sender = self.config.envelope_sender
        options: list[str] = []
        if not (sender + "".join(rcpts)).isascii():
            options.append("SMTPUTF8")  # refused below if the relay has no SMTPUTF8
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        elif not message.isascii():
            # An 8-bit text part and a relay that takes 7 bits only: regenerated as
            # quoted-printable or base64 (what aiosmtplib's send_message does).
            message = await asyncio.to_thread(_seven_bit, message)
        try:
            # The envelope takes the bare address; the From header keeps the display name.
            refused = await _sendmail(client, sender, rcpts, message, options)
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
        return refused

    async def check(self) -> None:
        client = await self._connect()
        await _quit(client)


async def _sendmail(
    client: aiosmtplib.SMTP, sender: str, rcpts: list[str], message: bytes, options: list[str]
) -> dict[str, aiosmtplib.SMTPResponse]:
    """aiosmtplib's `sendmail` (MAIL, each RCPT, DATA; RSET after a refusal; every recipient
    refused raises SMTPRecipientsRefused, some refused are returned), declaring the SIZE
    without its extra pass over the message: its count of the octets DATA sends is a regex
    over the whole message (with DATA's own two, 12% of the daemon's CPU for reports of
    100 KB faxes), where the outbox's stored wire form needs none."""
    utf8 = any(option.lower() == "smtputf8" for option in options)
    if utf8 and not client.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
    encoding = "utf-8" if utf8 else "ascii"
    if client.supports_extension("size"):
        options = [f"size={_wire_length(message)}", *options]
    refused: dict[str, aiosmtplib.SMTPResponse] = {}
    try:
        await client.mail(sender, options=options, encoding=encoding)
        for rcpt in rcpts:
            try:
                await client.rcpt(rcpt, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[exc.recipient] = aiosmtplib.SMTPResponse(exc.code, exc.message)
        if len(refused) == len(rcpts):
            raise aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(r.code, r.message, rcpt)
                    for rcpt, r in refused.items()
                ]
            )
        await client.data(message)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        # The envelope is reset, as sendmail does: a kept session starts clean.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset()
        raise
    return refused


def _wire_length(message: bytes) -> int:
    """The octets of `message` in DATA, dot-stuffing aside (RFC 1870's SIZE, counted as
    aiosmtplib counts it): when every line end is CRLF already (the outbox's stored form),
    its length, with the CRLF DATA adds if it does not end in one; otherwise aiosmtplib's own
    count of the message with its line ends made CRLF."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") == crlf == message.count(b"\n"):
        return len(message) + (0 if message.endswith(b"\r\n") else 2)
    return len(normalize_message_line_endings(message))


async def _quit(client: aiosmtplib.SMTP) -> None:
    # After DATA was answered 250 the message is the relay's: a failing QUIT changes nothing.
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def _drop(client: aiosmtplib.SMTP) -> None:
    """Close a session without QUIT (it is broken, or its loop is gone)."""
    with contextlib.suppress(Exception):
        client.close()


def _seven_bit(message: bytes) -> bytes:
    """`message` with its 8-bit parts re-encoded for a relay without 8BITMIME."""
    parsed = BytesParser(policy=policy.SMTP).parsebytes(message)
    out = BytesIO()
    BytesGenerator(out, policy=policy.SMTP.clone(cte_type="7bit")).flatten(parsed)
    return out.getvalue()


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

    async def send(self, message: bytes, recipients: Sequence[str]) -> None:
        rcpts = _recipients(recipients)
        # Maildir files use the local line ending; the relay form (CRLF) is for the wire.
        body = message.replace(b"\r\n", b"\n")
        await asyncio.to_thread(self._deliver_all, body, rcpts)

    async def close(self) -> None:
        """Nothing is kept between messages."""

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
