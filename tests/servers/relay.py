"""The `relay_server` fixture: a real SMTP relay (aiosmtpd) that captures mail and fails on cue.

Every message it accepts is written to disk and kept in memory with its envelope (and MAIL
FROM's options); it counts sessions (EHLOs) and QUITs, and can leave 8BITMIME unoffered. A script of
faults makes it answer like real relays do when things go wrong: `fail_next` (4xx) and
`reject_next` (5xx) at MAIL, RCPT or DATA, `refuse_recipient` for one address, and `go_down` /
`come_up` to stop listening and listen again on the same port, so "relay down, then back" is a
real refused connection followed by a real delivery.

It runs in a thread with aiosmtpd's Controller (its own event loop): fine for a test server,
and it lets synchronous and asynchronous tests use the same fixture. `make_relay_server` starts
variants with STARTTLS or implicit TLS (certificates from trustme) and AUTH.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.conftest import free_port

Stage = Literal["MAIL", "RCPT", "DATA"]
TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True)
class CapturedMessage:
    """One message as the relay received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    path: Path
    tls: bool
    auth_user: str | None
    mail_options: tuple[str, ...] = ()

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Fault:
    stage: Stage
    code: int
    text: str
    remaining: int


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)
    messages: list[CapturedMessage] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    sessions: int = 0
    quits: int = 0
    auth_failures: int = 0
    eight_bit: bool = True  # 8BITMIME offered at EHLO

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)


class _Handler:
    """aiosmtpd hooks: consult the fault script, capture what gets through."""

    def __init__(self, state: _State, directory: Path) -> None:
        self.state = state
        self.directory = directory

    def _fault(self, stage: Stage) -> str | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.stage == stage and fault.remaining > 0:
                    fault.remaining -= 1
                    return f"{fault.code} {fault.text}"
        return None

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        with self.state.lock:
            self.state.sessions += 1
            if not self.state.eight_bit:
                responses = [r for r in responses if "8BITMIME" not in r]
        return responses

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.state.lock:
            self.state.quits += 1
        return "221 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._fault("MAIL")
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.state.lock:
            refusal = self.state.refused.get(address.lower())
        if refusal is not None:
            return f"{refusal[0]} {refusal[1]}"
        fault = self._fault("RCPT")
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._fault("DATA")
        if fault is not None:
            return fault
        data = envelope.original_content or b""
        with self.state.lock:
            number = len(self.state.messages) + 1
            path = self.directory / f"{number:04d}.eml"
            path.write_bytes(data)
            auth = session.auth_data
            self.state.messages.append(
                CapturedMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=data,
                    path=path,
                    tls=_encrypted(server),
                    auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
                    mail_options=tuple(envelope.mail_options),
                )
            )
            self.state.arrived.notify_all()
        return f"250 2.0.0 Ok: queued as {number:04d}"


class _Session(SMTP):
    """aiosmtpd's SMTP session, remembering its socket so that stopping can wait for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Under TLS the transport is the TLS layer's; the socket is the one underneath.
        self.socket = transport.get_extra_info("socket")
        super().connection_made(transport)

    @property
    def socket_closed(self) -> bool:
        return self.socket is None or self.socket.fileno() == -1


class _Controller(Controller):
    """aiosmtpd's Controller, keeping its sessions so that stopping can close them.

    Controller.stop stops its loop and cancels the tasks in one go, so the sessions of clients
    still connected (a gateway keeps its session between messages) never close their sockets:
    `close_sessions` closes them first, as a relay that restarts drops its connections, and
    waits until every socket is closed. A TLS session takes several loop turns to let go of its
    socket (the TLS layer's shutdown, then the socket transport's own close); a loop stopped in
    between leaves a socket that only the garbage collector finds, with a ResourceWarning in
    whichever later test it happens to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[_Session] = []

    def factory(self) -> SMTP:
        server = self.make_server()
        self.sessions = [s for s in self.sessions if not s.socket_closed]
        self.sessions.append(server)
        return server

    def make_server(self) -> _Session:
        return _Session(self.handler, **self.SMTP_kwargs)

    def close_sessions(self) -> None:
        async def close() -> None:
            for server in self.sessions:
                if server.transport is not None:
                    server.transport.close()
            deadline = self.loop.time() + 5.0
            # A socket tells nobody when it closes (under TLS it does so after the session's
            # connection_lost): look, a few ms apart.
            while self.loop.time() < deadline and not all(s.socket_closed for s in self.sessions):  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.sessions.clear()


class _ImplicitTlsController(_Controller):
    """aiosmtpd offers AUTH only after STARTTLS; on an implicit-TLS port the whole session is
    encrypted, so AUTH is allowed from the start (set after construction: passing
    auth_require_tls=False would make aiosmtpd warn about plaintext AUTH)."""

    def make_server(self) -> _Session:
        server = _Session(self.handler, **self.SMTP_kwargs)
        server._auth_require_tls = False
        return server


class CapturingRelay:
    """A running capturing relay and the means to script and observe it."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: TlsMode = "none",
        users: dict[str, str] | None = None,
        ca: trustme.CA | None = None,
        eight_bit: bool = True,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.users = dict(users or {})
        self._ca = ca
        self._state = _State(eight_bit=eight_bit)
        self._handler = _Handler(self._state, directory)
        self._controller: _Controller | None = None
        self._server_context: ssl.SSLContext | None = None
        if tls != "none":
            self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(self.host, "localhost").configure_cert(self._server_context)

    @property
    def ca(self) -> trustme.CA:
        """The test CA of the relay's certificate, made when first needed: most relays speak
        plain SMTP, and a CA costs 0.08 s (far more on a loaded machine) per relay."""
        if self._ca is None:
            self._ca = trustme.CA()
        return self._ca

    # -- life cycle ----------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            if login in self.users and self.users[login] == password:
                return AuthResult(success=True, auth_data=data)
        with self._state.lock:
            self._state.auth_failures += 1
        return AuthResult(success=False, handled=False)

    def come_up(self) -> None:
        """Listen (again) on this relay's port."""
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True, "ready_timeout": 10.0}
        if self.tls == "starttls":
            kwargs["tls_context"] = self._server_context
            kwargs["require_starttls"] = True
        elif self.tls == "implicit":
            kwargs["ssl_context"] = self._server_context
        if self.users:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
        controller_class = _ImplicitTlsController if self.tls == "implicit" else _Controller
        controller = controller_class(self._handler, hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller

    def go_down(self) -> None:
        """Stop listening and drop the sessions open: connections are refused until
        `come_up`."""
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.close_sessions()
            controller.stop()

    start = come_up
    stop = go_down

    @property
    def is_up(self) -> bool:
        return self._controller is not None

    # -- script --------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        code: int = 451,
        message: str = "4.3.0 Try again later",
        at: Stage = "DATA",
    ) -> None:
        """Answer the next `n` commands at stage `at` with a temporary failure."""
        with self._state.lock:
            self._state.faults.append(_Fault(at, code, message, n))

    def reject_next(
        self,
        n: int = 1,
        code: int = 550,
        message: str = "5.7.1 Message rejected",
        at: Stage = "RCPT",
    ) -> None:
        """Answer the next `n` commands at stage `at` with a permanent failure."""
        with self._state.lock:
            self._state.faults.append(_Fault(at, code, message, n))

    def refuse_recipient(
        self, address: str, code: int = 550, message: str = "5.1.1 No such user"
    ) -> None:
        """Answer every RCPT TO for `address` with `code` (until `clear_faults`)."""
        with self._state.lock:
            self._state.refused[address.lower()] = (code, message)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
            self._state.refused.clear()

    # -- observation ---------------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMessage]:
        with self._state.lock:
            return list(self._state.messages)

    @property
    def sessions(self) -> int:
        """EHLOs seen: how many times a client connected and introduced itself."""
        with self._state.lock:
            return self._state.sessions

    @property
    def quits(self) -> int:
        """QUITs seen: sessions a client ended politely."""
        with self._state.lock:
            return self._state.quits

    @property
    def auth_failures(self) -> int:
        with self._state.lock:
            return self._state.auth_failures

    @property
    def connected(self) -> int:
        """Sessions whose connection is still open (a killed client's ends when the relay
        reads its end of file: whatever DATA it had finished is captured by then)."""
        controller = self._controller
        if controller is None:
            return 0
        return sum(
            1 for s in list(controller.sessions) if s.transport and not s.transport.is_closing()
        )

    def messages_to(self, address: str) -> list[CapturedMessage]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]

    def wait_for_sync(self, count: int, timeout: float = 10.0) -> list[CapturedMessage]:
        """Block until at least `count` messages arrived; AssertionError after `timeout`."""
        with self._state.arrived:
            arrived = self._state.arrived.wait_for(
                lambda: len(self._state.messages) >= count, timeout
            )
            messages = list(self._state.messages)
        if not arrived:
            raise AssertionError(
                f"expected {count} message(s) at the relay within {timeout}s, got {len(messages)}"
            )
        return messages

    # The timeout is enforced by the waiting thread, not by cancelling this coroutine.
    async def wait_for(self, count: int, timeout: float = 10.0) -> list[CapturedMessage]:  # noqa: ASYNC109
        """`wait_for_sync` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_sync, count, timeout)

    # -- configuration for a gateway -----------------------------------------------------

    def relay_config_overrides(self, user: str | None = None) -> dict[str, Any]:
        """The [relay] section of a gateway configuration that sends through this relay."""
        section: dict[str, Any] = {
            "backend": "smtp",
            "host": self.host,
            "port": self.port,
            "starttls": self.tls == "starttls",
            "tls": self.tls == "implicit",
            "timeout_seconds": 5.0,
        }
        if self.users:
            login = user if user is not None else next(iter(self.users))
            section["username"] = login
            section["password"] = self.users.get(login, "")
        return section

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this relay's test CA (and nothing else)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=None)
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode())
        return context


RelayFactory = Callable[..., CapturingRelay]


@pytest.fixture
def make_relay_server(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start capturing relays: make_relay_server(tls="starttls", users={"u": "pw"})."""
    started: list[CapturingRelay] = []

    def make(**options: Any) -> CapturingRelay:
        relay = CapturingRelay(tmp_path / f"relay-{len(started)}", **options)
        relay.come_up()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.go_down()


@pytest.fixture
def relay_server(make_relay_server: RelayFactory) -> CapturingRelay:
    """A plain capturing SMTP relay (no TLS, no AUTH) on a free port."""
    return make_relay_server()


def _encrypted(server: SMTP) -> bool:
    # After STARTTLS and on an implicit-TLS port alike, the transport has an SSL object.
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None
