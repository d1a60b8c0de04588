"""One SMTP session: aiosmtpd's protocol plus what the daemon needs around it.

A session id in the log context of the whole session; replies with enhanced status codes; the
message read at DATA into a spool draft (gateway/smtp/data.py) instead of into memory. Each
session holds a descriptor, so it is admitted against the caps per client and in total
(`SmtpServer.admit`); and it must make progress: one that sends only junk commands (NOOP, RSET,
HELP, VRFY, EXPN, and MAIL or RCPT that were refused) past a count, or nothing that moves it on
for `idle_timeout_seconds`, is told `421 4.7.0` and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP

from gateway import log
from gateway.queue.schedule import resource_error
from gateway.smtp import data, mailpaths, replies
from gateway.smtp.auth import peer_of
from gateway.smtp.connections import client_key
from gateway.smtp.handler import FaxHandler
from gateway.smtp.policy import client_ip

if TYPE_CHECKING:
    from gateway.smtp.server import SmtpServer

logger = log.get_logger(__name__)


def _junk(name: str) -> Any:
    """aiosmtpd's smtp_<name>, counted as a junk command first (keeping its HELP text)."""
    base = getattr(SMTP, f"smtp_{name}")

    async def command(self: GatewaySMTP, arg: str) -> None:
        if await self.junk_command():
            return
        await base(self, arg)

    for attribute in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
        if hasattr(base, attribute):
            setattr(command, attribute, getattr(base, attribute))
    return command


def _refusal_counted(name: str) -> Any:
    """aiosmtpd's smtp_<name> (MAIL, RCPT), whose refusal counts as a junk command after its
    reply: a client looping on refused senders or recipients (probing for a relay or for the
    numbers it may dial, a log line each) is closed like one looping on NOOP."""
    base = getattr(SMTP, f"smtp_{name}")

    async def command(self: GatewaySMTP, arg: str) -> None:
        self._last_reply = ""
        await base(self, arg)
        if self._last_reply[:1] in ("4", "5"):
            await self.junk_command()

    for attribute in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
        if hasattr(base, attribute):
            setattr(command, attribute, getattr(base, attribute))
    return command


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol plus what the daemon needs around each session.

    A session id bound into the log context of the whole session; replies with enhanced status
    codes; the bookkeeping `SmtpServer.stop` uses to let DATA finish; the connection caps, the
    junk command count and the idle limit.
    """

    def __init__(self, handler: FaxHandler, *, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.session_id = secrets.token_hex(5)
        self.owner = owner
        self.in_data = False
        self._raw_replies = False
        self._connected = False
        # Set when refused at a connection cap: aiosmtpd never saw this connection.
        self._refused = False
        self.client: str | None = None
        self._junk = 0
        self._last_reply = ""  # the latest reply pushed, for _refusal_counted
        self._idle: asyncio.TimerHandle | None = None
        self._idle_due = False
        self._queued = False
        # The message of the DATA command being answered (gateway/smtp/data.py).
        self.received: data.Received | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._connected:
            # After STARTTLS aiosmtpd calls this again for the TLS transport: same session.
            super().connection_made(transport)
            return
        self._connected = True
        key = client_key(client_ip(transport.get_extra_info("peername")))
        reply = self.owner.admit(key)
        if reply is not None:
            # 421 in place of the greeting, and the descriptor is given back at once.
            self._refused = True
            with contextlib.suppress(Exception):
                transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
            transport.close()
            return
        self.client = key
        self.owner.session_opened(self)
        self.progress()
        # aiosmtpd starts the session's task in here; the task copies this context, so every
        # line logged while serving the session carries its id.
        context = contextvars.copy_context()
        context.run(log.bind, session=self.session_id)
        context.run(super().connection_made, transport)
        context.run(logger.debug, "smtp.connected", peer=str(transport.get_extra_info("peername")))
        if self.owner.stopping:
            # Accepted in the same instant the listeners closed: 421 in place of the greeting.
            self.close_for_shutdown()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._idle is not None:
            self._idle.cancel()
        try:
            super().connection_lost(error)
        finally:
            self.event_handler.forget(self.envelope)
            self.owner.session_closed(self)

    # -- progress, junk and idleness -------------------------------------------------------

    def progress(self) -> None:
        """The session moved on (greeting, STARTTLS, a login, a message queued): the junk
        count starts over and the idle limit runs from now."""
        self._junk = 0
        self._idle_due = False
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(
            self.owner.config.smtp.idle_timeout_seconds, self._idle_expired
        )

    def _idle_expired(self) -> None:
        self._idle = None
        if self.in_data:
            # DATA has its own bound (data_timeout_seconds); decide when it ends.
            self._idle_due = True
            return
        self._close_for(replies.IDLE_TOO_LONG, replies.Reason.IDLE)

    async def junk_command(self) -> bool:
        """Count a NOOP, RSET, HELP, VRFY or EXPN; past the limit say 421 and close (True)."""
        self._junk += 1
        if self._junk <= self.owner.config.smtp.max_junk_commands:
            return False
        self._close_for(replies.TOO_MANY_JUNK_COMMANDS, replies.Reason.JUNK_COMMANDS)
        return True

    def _close_for(self, reply: str, reason: replies.Reason) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.owner.closed_for(self, reason)
        with contextlib.suppress(Exception):
            transport.write(f"{reply}\r\n".encode())  # type: ignore[attr-defined]
        transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's reading of a MAIL or RCPT path, without its header parser for a plain
        one (gateway/smtp/mailpaths.py)."""
        plain = mailpaths.plain_path(arg)
        if plain is None:
            return super()._getaddr(arg)
        address, rest = plain
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    smtp_NOOP = _junk("NOOP")
    smtp_RSET = _junk("RSET")
    smtp_HELP = _junk("HELP")
    smtp_VRFY = _junk("VRFY")
    smtp_EXPN = _junk("EXPN")
    smtp_MAIL = _refusal_counted("MAIL")
    smtp_RCPT = _refusal_counted("RCPT")

    async def smtp_AUTH(self, arg: str) -> None:
        before = self.session is not None and self.session.authenticated
        await super().smtp_AUTH(arg)
        if not before and self.session is not None and self.session.authenticated:
            self.progress()

    async def smtp_STARTTLS(self, arg: str) -> None:
        before = self._tls_protocol is not None
        await super().smtp_STARTTLS(arg)
        if not before and self._tls_protocol is not None and self._tls_handshake_okay:
            self.progress()

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: EHLO's own reply lines carry no enhanced status codes.
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        self._queued = False
        foreground = self.owner.foreground
        try:
            with foreground.busy() if foreground is not None else contextlib.nullcontext():
                await self._data(arg)
        finally:
            self.in_data = False
            if self.owner.stopping:
                self.close_for_shutdown()
            elif self._queued:
                self.progress()
            elif self._idle_due:
                self._close_for(replies.IDLE_TOO_LONG, replies.Reason.IDLE)

    async def _data(self, arg: str) -> None:
        """aiosmtpd's smtp_DATA, with the message read by gateway/smtp/data.py into a spool
        draft (`self.received` while the handler's hook runs) instead of into memory."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            outcome = await data.receive(
                self._reader,
                self.owner.spool,
                size_limit=self.data_size_limit,
                line_limit=self.line_length_limit,
            )
        except asyncio.CancelledError:
            self._writer.close()  # the connection went away inside DATA (aiosmtpd does this)
            raise
        if outcome is data.Overrun.LINE_TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()
            return
        if outcome is data.Overrun.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        if isinstance(outcome, data.NotStored):
            await self.push(self._not_stored(outcome.error))
            self._set_post_data_state()
            return
        self.received = outcome
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self.received = None
            if not outcome.taken:
                await asyncio.shield(outcome.close())
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _not_stored(self, error: OSError) -> str:
        """The reply to a message whose draft could not be written: 452 for a full disk (or
        no descriptors or memory), else 451; either way the client keeps it."""
        if not resource_error(error):
            logger.error(
                "smtp.error",
                stage="data",
                reason=replies.Reason.INTERNAL_ERROR,
                error=f"{type(error).__name__}: {error}",
            )
            return replies.TEMPORARY_FAILURE
        logger.error(
            "smtp.rejected",
            stage="data",
            reason=replies.Reason.NO_STORAGE,
            reply=replies.INSUFFICIENT_STORAGE,
            error=str(error),
        )
        if self.owner.metrics is not None:
            self.owner.metrics.smtp_rejected.labels(reason=str(replies.Reason.NO_STORAGE)).inc()
        return replies.INSUFFICIENT_STORAGE

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            better, reason = replies.LIBRARY_REPLIES.get(status, (None, None))
            if reason is replies.Reason.TOO_BIG and self.data_size_limit:
                better = replies.too_big(self.data_size_limit)
            status = better or status
            if self.in_data and status.startswith("250"):
                self._queued = True
            if self.session is not None and self.session.extended_smtp and not self._raw_replies:
                status = replies.with_enhanced_code(status)
            if reason is not None:
                # Refusals aiosmtpd makes before our handler is asked still get their line.
                logger.info(
                    "smtp.rejected",
                    stage="protocol",
                    reason=reason,
                    reply=status,
                    client=str(peer_of(self)),
                )
                if self.owner.metrics is not None:
                    self.owner.metrics.smtp_rejected.labels(reason=str(reason)).inc()
        self._last_reply = status if isinstance(status, str) else status.decode("ascii", "replace")
        await super().push(status)

    def abort(self) -> None:
        """Drop the connection now, without waiting for the client (a TLS close included)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    def close_for_shutdown(self) -> None:
        """Say 421 and hang up (RFC 5321 4.3.2: a server may do so at any time)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(Exception):
            transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())  # type: ignore[attr-defined]
        transport.close()
