"""The SMTP listeners on the daemon's own event loop, and their orderly start and stop.

aiosmtpd's threaded Controller would run a second event loop; instead each listener is a plain
`loop.create_server` with a protocol factory, so SMTP sessions, the store and the workers share
one loop. On stop the listeners close first (new connections are refused), sessions in the
middle of DATA may finish within a bound, every other session is told `421 4.3.2` and closed.

Each session (gateway/smtp/session.py) holds a descriptor, so their number is capped per client
and in total (below the descriptor limit, see gateway.ops.fds).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from gateway import log
from gateway.config import Address, Config, ConfigError
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.mailout.templates import MailRenderer
from gateway.ops import fds
from gateway.ops.flood import Tally
from gateway.ops.metrics import Metrics
from gateway.queue.foreground import Foreground
from gateway.smtp import replies
from gateway.smtp.auth import AuthThrottle, SmtpAuth
from gateway.smtp.connections import ConnectionLimits
from gateway.smtp.handler import FaxHandler
from gateway.smtp.librarylog import QuietLibraryLog, quiet_library_log
from gateway.smtp.session import GatewaySMTP
from gateway.smtp.users import Users, UsersFileError
from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.spool import Spool

logger = log.get_logger(__name__)

GREETING_IDENT = "ESMTP fax-gateway"


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
        self._library_log: QuietLibraryLog | None = None

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
        self._library_log = quiet_library_log()
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
        self.connections.reconfigure(limits.max_total, limits.max_per_client)
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
