"""SMTP AUTH PLAIN and LOGIN against the users file, with failed attempts throttled per client.

aiosmtpd's `authenticator=` callback is synchronous, and a scrypt check takes tens of
milliseconds: called on the event loop it would stall every other session. So the two SASL
mechanisms are provided here as async `auth_PLAIN`/`auth_LOGIN` (aiosmtpd's documented hook
for mechanisms, looked up on the handler), reading the credentials with
`SMTP.challenge_auth` and checking the password in a worker thread. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import time
from base64 import b64decode
from collections import deque
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from gateway import log
from gateway.smtp import replies
from gateway.smtp.policy import IPAddress, client_ip
from gateway.smtp.replies import Reason
from gateway.smtp.users import Users

logger = log.get_logger(__name__)

# Prune forgotten addresses once the table is this big, so a scan from many addresses cannot
# grow it without bound.
_PRUNE_AT = 1024


class AuthThrottle:
    """Per client: `max_failures` failed logins within `window` seconds lock it out for
    `lockout` seconds. IPv6 clients are counted per /64, the block one subscriber gets."""

    def __init__(
        self,
        max_failures: int,
        lockout: float,
        *,
        window: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        # Failures older than this are forgotten; by default as long as the lockout itself.
        self.window = window if window is not None else lockout
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    @staticmethod
    def key(ip: IPAddress | None) -> str:
        if ip is None:
            return "unknown"
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def locked(self, ip: IPAddress | None) -> bool:
        key = self.key(ip)
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._locked_until[key]
            return False
        return True

    def failed(self, ip: IPAddress | None) -> bool:
        """Count a failure; True if this one locked the client out."""
        now = self._clock()
        key = self.key(ip)
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(self._failures) > _PRUNE_AT:
            self._prune(now)
        if len(times) >= self.max_failures:
            self._locked_until[key] = now + self.lockout
            self._failures.pop(key, None)
            return True
        return False

    # A successful login does not clear the count: otherwise one known account would let a
    # guesser reset the counter between guesses at other accounts' passwords.

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]


class SmtpAuth:
    """The AUTH mechanisms of the gateway's SMTP sessions."""

    def __init__(self, users: Users, throttle: AuthThrottle) -> None:
        self.users = users
        self.throttle = throttle

    def locked(self, server: SMTP) -> bool:
        return self.throttle.locked(peer_of(server))

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 4616: base64("authzid NUL authcid NUL password"), inline or after a 334."""
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = await _decode_initial(server, args[1])
            if blob is None:
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN credentials")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        # Acting on behalf of another identity is not supported: only "log in as myself".
        if authzid and authzid != login:
            return await self._refuse(server, "PLAIN", login, "authorization identity")
        return await self._check(server, "PLAIN", login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """The non-standard but ubiquitous LOGIN: user name and password in two 334 rounds."""
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            login = await _decode_initial(server, args[1])
            if login is None:
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check(server, "LOGIN", login, password)

    async def _check(
        self, server: SMTP, mechanism: str, login: bytes, password: bytes
    ) -> AuthResult:
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            return await self._refuse(server, mechanism, login, "user name is not UTF-8")
        # Parallel sessions from one address may all have passed the check in handle_AUTH.
        if self.locked(server):
            return _locked_result()
        if await asyncio.to_thread(self.users.verify, name, password):
            logger.info("smtp.auth_ok", user=name, mechanism=mechanism)
            return AuthResult(success=True, auth_data=name, message=replies.AUTH_OK)
        return await self._refuse(server, mechanism, login, "wrong user name or password")

    async def _refuse(self, server: SMTP, mechanism: str, login: bytes, why: str) -> AuthResult:
        ip = peer_of(server)
        now_locked = self.throttle.failed(ip)
        logger.info(
            "smtp.auth_failed",
            reason=Reason.AUTH_FAILED,
            user=login.decode("utf-8", "backslashreplace")[:100],
            mechanism=mechanism,
            detail=why,
            client=str(ip),
        )
        if now_locked:
            logger.warning(
                "smtp.auth_locked",
                reason=Reason.AUTH_LOCKED,
                client=self.throttle.key(ip),
                seconds=self.throttle.lockout,
            )
        return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)


def _locked_result() -> AuthResult:
    return AuthResult(success=False, handled=False, message=replies.AUTH_LOCKED)


async def _decode_initial(server: SMTP, text: str) -> bytes | None:
    """An initial response on the AUTH line; "=" is an empty one (RFC 4954)."""
    if text == "=":
        return b""
    try:
        return b64decode(text.encode("ascii", "replace"), validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def peer_of(server: Any) -> IPAddress | None:
    """The client address of an aiosmtpd protocol's current session."""
    session = getattr(server, "session", None)
    return client_ip(session.peer if session is not None else None)
