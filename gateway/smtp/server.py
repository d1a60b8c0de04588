"""The SMTP listeners on the daemon's own event loop, and their orderly start and stop.

aiosmtpd's threaded Controller would run a second event loop; instead each listener is a plain
`loop.create_server` with a protocol factory, so SMTP sessions, the store and the workers share
one loop. On stop the listeners close first (new connections are refused), sessions in the
middle of DATA may finish within a bound, every other session is told `421 4.3.2` and closed.
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

from aiosmtpd.smtp import SMTP

from gateway import log
from gateway.config import Address, Config, ConfigError
from gateway.ops.metrics import Metrics
from gateway.smtp import replies
from gateway.smtp.auth import AuthThrottle, SmtpAuth, peer_of
from gateway.smtp.handler import FaxHandler
from gateway.smtp.users import Users, UsersFileError
from gateway.store import Database
from gateway.store.spool import Spool

logger = log.get_logger(__name__)

GREETING_IDENT = "ESMTP fax-gateway"


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol plus what the daemon needs around each session.

    A session id bound into the log context of the whole session; replies with enhanced status
    codes; and the bookkeeping `SmtpServer.stop` uses to let DATA finish.
    """

    def __init__(self, handler: FaxHandler, *, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.session_id = secrets.token_hex(5)
        self.owner = owner
        self.in_data = False
        self._raw_replies = False
        self._connected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._connected:
            # After STARTTLS aiosmtpd calls this again for the TLS transport: same session.
            super().connection_made(transport)
            return
        self._connected = True
        self.owner.session_opened(self)
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
        try:
            super().connection_lost(error)
        finally:
            self.event_handler.forget(self.envelope)
            self.owner.session_closed(self)

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: EHLO's own reply lines carry no enhanced status codes.
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
            if self.owner.stopping:
                self.close_for_shutdown()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            better, reason = replies.LIBRARY_REPLIES.get(status, (None, None))
            if reason is replies.Reason.TOO_BIG and self.data_size_limit:
                better = replies.too_big(self.data_size_limit)
            status = better or status
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


class _HideDeprecatedLoginData(logging.Filter):
    # aiosmtpd itself sets the deprecated Session.login_data after every successful AUTH and
    # then warns about it on its own logger; the warning tells an operator nothing.
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


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
    ) -> None:
        """`drain_timeout` bounds how long stop() waits for DATA in progress; by default half
        of queue.shutdown_timeout_seconds, leaving the rest of the daemon's bound on stop() to
        the store writes of the messages that finished."""
        self.config = config
        self.drain_timeout = (
            drain_timeout
            if drain_timeout is not None
            else config.queue.shutdown_timeout_seconds / 2
        )
        self.db = db
        self.spool = spool
        self.metrics = metrics
        self.wake = wake
        self.users: Users | None = None
        self.handler: FaxHandler | None = None
        self.stopping = False
        self._servers: list[asyncio.Server] = []
        self._sessions: set[GatewaySMTP] = set()
        self._sessions_changed = asyncio.Event()
        self.addresses: list[Address] = []
        self.tls_addresses: list[Address] = []

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
                throttle = AuthThrottle(smtp.auth_max_failures, smtp.auth_lockout_seconds)
                auth = SmtpAuth(self.users, throttle)
                logger.info("smtp.users_loaded", users=count)
        mail_log = logging.getLogger("mail.log")
        if not any(isinstance(f, _HideDeprecatedLoginData) for f in mail_log.filters):
            mail_log.addFilter(_HideDeprecatedLoginData())
        self.handler = FaxHandler(
            self.config, self.db, self.spool, self.wake, auth=auth, metrics=self.metrics
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
        """SIGHUP: apply a new configuration's policy (senders, networks, limits) and users.

        The new rules apply from each session's next command; listen addresses, TLS files and
        the users file's path need a restart.
        """
        self.config = config
        if self.handler is not None:
            self.handler.reconfigure(config)
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
        # Closed transports call connection_lost on the next loop iterations.
        while self._sessions:
            self._sessions_changed.clear()
            try:
                await asyncio.wait_for(self._sessions_changed.wait(), 5)
            except TimeoutError:
                break
        logger.info("smtp.stopped")

    def session_opened(self, session: GatewaySMTP) -> None:
        self._sessions.add(session)

    def session_closed(self, session: GatewaySMTP) -> None:
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
