"""The SMTP listeners on the daemon's own event loop, and their orderly start and stop.

aiosmtpd's threaded Controller would run a second event loop; instead each listener is a plain
`loop.create_server` with a protocol factory, so SMTP sessions, the store and the workers share
one loop. On stop the listeners close first (new connections are refused), sessions in the
middle of DATA may finish within a bound, every other session is told `421 4.3.2` and closed.

Each session holds a descriptor, so their number is capped per client and in total (below the
descriptor limit, see gateway.ops.fds); and a session must make progress: one that sends only
junk commands (NOOP, RSET, HELP, VRFY, EXPN) past a count, or nothing that moves it on for
`idle_timeout_seconds`, is told `421 4.7.0` and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP

from gateway import log
from gateway.config import Address, Config, ConfigError
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.mailout.templates import MailRenderer
from gateway.ops import fds
from gateway.ops.flood import Tally
from gateway.ops.metrics import Metrics
from gateway.queue.foreground import Foreground
from gateway.queue.schedule import resource_error
from gateway.smtp import data, mailpaths, replies
from gateway.smtp.auth import AuthThrottle, SmtpAuth, peer_of
from gateway.smtp.connections import ConnectionLimits, client_key
from gateway.smtp.handler import FaxHandler
from gateway.smtp.policy import client_ip
from gateway.smtp.users import Users, UsersFileError
from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.spool import Spool

logger = log.get_logger(__name__)

GREETING_IDENT = "ESMTP fax-gateway"


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


# aiosmtpd's warnings about one client's commands, by the words that start them.
_CLIENT_WARNINGS = {
    "%r unrecognised: %s": "unrecognised_command",
    "%r too many bogus commands": "too_many_bogus_commands",
    "%r aborted AUTH with '*'": "aborted_auth",
}


class _QuietLibraryLog(logging.Filter):
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


def _quiet_library_log() -> _QuietLibraryLog:
    mail_log = logging.getLogger("mail.log")
    for existing in mail_log.filters:
        if isinstance(existing, _QuietLibraryLog):
            return existing
    quiet = _QuietLibraryLog()
    mail_log.addFilter(quiet)
    return quiet


class SmtpServer:
    """The gateway's SMTP service: a component with `start()` and `stop()`."""

    def __init__(
        self,
        config: Config,
        db: Database,
        spool: Spool,
        wake: Callable[[], None],
        *,
        drain_timeout: float | None = None,
        metrics: Metrics | None = None,
        renderer: MailRenderer | None = None,
        office: OfficeConverter | None = None,
        documents: DocumentWorkers | None = None,
        commits: GroupCommit | None = None,
        foreground: Foreground | None = None,
    ) -> None:
        """`drain_timeout` bounds how long stop() waits for DATA in progress; by default half
        of queue.shutdown_timeout_seconds, leaving the rest of the daemon's bound on stop() to
        the store writes of the messages that finished. `documents`: the daemon's document
        workers, which read each message at DATA; without them the server starts and stops
        workers of its own."""
        self.config = config
        self._own_documents = documents is None
        self.documents = documents if documents is not None else DocumentWorkers(config)
        self.drain_timeout = (
            drain_timeout
            if drain_timeout is not None
            else config.queue.shutdown_timeout_seconds / 2
        )
        self.db = db
        self.spool = spool
        self.metrics = metrics
        self.office = office
        self.commits = commits
        # Marked busy while a session is in DATA: the daemon's workers wait for it.
        self.foreground = foreground
        self.wake = wake
        # The daemon's (reloaded on SIGHUP with the others); without one, start() makes its own.
        self.renderer = renderer
        self.users: Users | None = None
        self.handler: FaxHandler | None = None
        self.stopping = False
        self._servers: list[asyncio.Server] = []
        self._sessions: set[GatewaySMTP] = set()
        self._sessions_changed = asyncio.Event()
        self.addresses: list[Address] = []
        self.tls_addresses: list[Address] = []
        self.connections = self._limits(config)
        self.closures = Tally("smtp.session_closed", "smtp.sessions_closed", level="info")
        self._library_log: _QuietLibraryLog | None = None

    @property
    def port(self) -> int:
        """The port of the plain (STARTTLS) listener once started; useful with port 0."""
        return self.addresses[0].port

    @property
    def tls_port(self) -> int | None:
        """The port of the implicit-TLS listener, if configured."""
        return self.tls_addresses[0].port if self.tls_addresses else None

    async def start(self) -> None:
        smtp = self.config.smtp
        loop = asyncio.get_running_loop()
        tls_context = None
        if smtp.tls_cert is not None and smtp.tls_key is not None:
            tls_context = await asyncio.to_thread(_server_tls_context, smtp.tls_cert, smtp.tls_key)
        auth = None
        if smtp.users_file is not None:
            self.users = Users(smtp.users_file)
            try:
                count = await asyncio.to_thread(self.users.load)
            except UsersFileError as exc:
                raise ConfigError([f"smtp.users_file: {exc}"]) from None
            if tls_context is None:
                logger.warning(
                    "smtp.auth_disabled", why="users_file is set but TLS is not: AUTH needs TLS"
                )
            else:
                throttle = AuthThrottle(
                    smtp.auth_max_failures,
                    smtp.auth_lockout_seconds,
                    account_max_failures=smtp.auth_account_max_failures,
                )
                auth = SmtpAuth(self.users, throttle, max_checks=smtp.auth_max_concurrent_checks)
                logger.info("smtp.users_loaded", users=count)
        self._library_log = _quiet_library_log()
        if self.renderer is None:
            self.renderer = await asyncio.to_thread(MailRenderer, self.config.templates.dir)
        if self._own_documents:
            await self.documents.start()
        self.handler = FaxHandler(
            self.config,
            self.db,
            self.spool,
            self.wake,
            documents=self.documents,
            auth=auth,
            metrics=self.metrics,
            renderer=self.renderer,
            office=self.office,
            commits=self.commits,
        )
        # socket.getfqdn() may ask DNS: once, off the loop, not per connection as aiosmtpd would.
        hostname = smtp.hostname or await asyncio.to_thread(socket.getfqdn)

        def factory(implicit_tls: bool) -> Callable[[], GatewaySMTP]:
            assert self.handler is not None
            handler = self.handler

            def make() -> GatewaySMTP:
                return GatewaySMTP(
                    handler,
                    owner=self,
                    data_size_limit=smtp.max_message_bytes,
                    enable_SMTPUTF8=True,
                    decode_data=False,
                    hostname=hostname,
                    ident=GREETING_IDENT,
                    # The implicit-TLS listener is encrypted from the first byte: no STARTTLS
                    # there, and AUTH may be offered at once.
                    tls_context=None if implicit_tls else tls_context,
                    auth_require_tls=not implicit_tls,
                    timeout=smtp.data_timeout_seconds,
                    loop=loop,
                )

            return make

        try:
            server = await loop.create_server(
                factory(False), smtp.listen.host, smtp.listen.port, reuse_address=True
            )
            self._servers.append(server)
            self.addresses = _bound(server)
            if smtp.tls_listen is not None and tls_context is not None:
                server = await loop.create_server(
                    factory(True),
                    smtp.tls_listen.host,
                    smtp.tls_listen.port,
                    ssl=tls_context,
                    reuse_address=True,
                )
                self._servers.append(server)
                self.tls_addresses = _bound(server)
        except BaseException:
            await self._close_listeners()
            raise
        logger.info(
            "smtp.listening",
            listen=[str(a) for a in self.addresses],
            tls_listen=[str(a) for a in self.tls_addresses],
            starttls=tls_context is not None,
            auth=auth is not None,
        )

    async def reload(self, config: Config) -> None:
        """SIGHUP: apply a new configuration's policy (senders, networks, limits, AUTH limits)
        and users.

        The new rules apply from each session's next command; listen addresses, TLS files and
        the users file's path need a restart.
        """
        self.config = config
        limits = self._limits(config)
        self.connections.max_total = limits.max_total
        self.connections.max_per_client = limits.max_per_client
        if self.handler is not None:
            self.handler.reconfigure(config)
            auth = self.handler.auth
            if auth is not None:
                smtp = config.smtp
                auth.throttle.reconfigure(
                    smtp.auth_max_failures,
                    smtp.auth_lockout_seconds,
                    account_max_failures=smtp.auth_account_max_failures,
                )
                auth.reconfigure(smtp.auth_max_concurrent_checks)
        if self._own_documents:
            self.documents.reconfigure(config)
        await self.reload_users()

    async def reload_users(self) -> None:
        """Re-read the users file (for SIGHUP); on error keep the users known so far."""
        if self.users is None:
            return
        try:
            count = await asyncio.to_thread(self.users.reload)
        except UsersFileError as exc:
            logger.error("smtp.users_reload_failed", error=str(exc))
            return
        logger.info("smtp.users_loaded", users=count)

    async def stop(self) -> None:
        """Refuse new connections, let DATA in progress finish (bounded), close the rest."""
        self.stopping = True
        await self._close_listeners()
        for session in list(self._sessions):
            if not session.in_data:
                session.close_for_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while self._sessions and loop.time() < deadline:
            self._sessions_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sessions_changed.wait(), deadline - loop.time())
        if self._sessions:
            logger.warning("smtp.stop_timeout", sessions=len(self._sessions))
            for session in list(self._sessions):
                session.abort()
        if self.handler is not None:
            await self.handler.drain()
        if self._own_documents:
            await self.documents.stop()
        # Closed transports call connection_lost on the next loop iterations.
        while self._sessions:
            self._sessions_changed.clear()
            try:
                await asyncio.wait_for(self._sessions_changed.wait(), 5)
            except TimeoutError:
                break
        self.connections.refusals.flush()
        self.closures.flush()
        if self._library_log is not None:
            self._library_log.tally.flush()
        if self.handler is not None and self.handler.auth is not None:
            self.handler.auth.refusals.flush()
        logger.info("smtp.stopped")

    @staticmethod
    def _limits(config: Config) -> ConnectionLimits:
        smtp = config.smtp
        total = fds.cap(smtp.max_connections, fds.SMTP_SHARE, "smtp")
        return ConnectionLimits(total, min(smtp.max_connections_per_ip, total))

    def admit(self, client: str) -> str | None:
        """None if a new connection of `client` may have a session, else the 421 to say."""
        why = self.connections.admit(client)
        if why is None:
            return None
        if self.metrics is not None:
            self.metrics.smtp_rejected.labels(reason=str(replies.Reason.TOO_MANY_CONNECTIONS)).inc()
        if why == "total":
            return replies.TOO_MANY_CONNECTIONS
        return replies.TOO_MANY_CONNECTIONS_FROM_CLIENT

    def closed_for(self, session: GatewaySMTP, reason: replies.Reason) -> None:
        """A session is being closed for junk or idleness: tallied, not a line each."""
        self.closures.add(str(reason), client=session.client, reason=reason)
        if self.metrics is not None:
            self.metrics.smtp_rejected.labels(reason=str(reason)).inc()

    def session_opened(self, session: GatewaySMTP) -> None:
        self._sessions.add(session)

    def session_closed(self, session: GatewaySMTP) -> None:
        if session.client is not None and session in self._sessions:
            self.connections.release(session.client)
        self._sessions.discard(session)
        self._sessions_changed.set()

    async def _close_listeners(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()


def _server_tls_context(cert: Any, key: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _bound(server: asyncio.Server) -> list[Address]:
    return [Address(*sock.getsockname()[:2]) for sock in server.sockets]
