"""SMTP AUTH PLAIN and LOGIN against the users file, with failed attempts throttled per client
and per user name, and the password checks running at once bounded.

aiosmtpd's `authenticator=` callback is synchronous, and a scrypt check takes tens of
milliseconds: called on the event loop it would stall every other session. So the two SASL
mechanisms are provided here as async `auth_PLAIN`/`auth_LOGIN` (aiosmtpd's documented hook
for mechanisms, looked up on the handler), reading the credentials with
`SMTP.challenge_auth` and checking the password in a worker thread. Passwords are never logged.

An attempt is counted before its password is checked (see AuthThrottle), so a burst of
parallel guesses gets no more checks than the limit allows. Attempts refused without a check
are tallied (gateway.ops.flood) rather than logged one by one; each lockout is one line.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import time
from base64 import b64decode
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from gateway import log
from gateway.ops.flood import Tally
from gateway.smtp import replies
from gateway.smtp.connections import client_key
from gateway.smtp.policy import IPAddress, Refusal, client_ip
from gateway.smtp.replies import Reason
from gateway.smtp.users import Users

logger = log.get_logger(__name__)

# Prune forgotten keys once a table is this big, so a scan from many addresses (or at many user
# names) cannot grow it without bound; past _MAX_KEYS the oldest entries go even if live.
_PRUNE_AT = 1024
_MAX_KEYS = 16384
# Password checks one client may have running at once; more wait their turn.
PER_CLIENT_CHECKS = 2
# Longest wait for a turn (behind the checks of one client, of one user, or of everyone).
ADMIT_WAIT_SECONDS = 30.0
# Addresses remembered per user as ones it logged in from (spared by the user's lockout).
_KNOWN_PER_USER = 16


class _Failures:
    """Failures within a window, lockouts, and checks in flight, per key (client or user)."""

    def __init__(
        self, max_failures: int, lockout: float, window: float, clock: Callable[[], float]
    ) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = window
        self._clock = clock
        self.failures: dict[str, deque[float]] = {}
        self.locked_until: dict[str, float] = {}
        self.in_flight: Counter[str] = Counter()

    def locked(self, key: str) -> bool:
        until = self.locked_until.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self.locked_until[key]
            return False
        return True

    def recent(self, key: str) -> int:
        times = self.failures.get(key)
        if not times:
            return 0
        cutoff = self._clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    def full(self, key: str) -> bool:
        """Whether one more attempt could reach the limit: the failures so far plus the
        checks still running, each of which may be one more failure."""
        return self.recent(key) + self.in_flight[key] >= self.max_failures

    def fail(self, key: str) -> bool:
        """Count a failure; True if this one locked `key` out."""
        now = self._clock()
        times = self.failures.setdefault(key, deque())
        times.append(now)
        if len(self.failures) > _PRUNE_AT:
            self._prune(now)
        if self.recent(key) >= self.max_failures and not self.locked(key):
            self.locked_until[key] = now + self.lockout
            self.failures.pop(key, None)
            return True
        return False

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self.failures.items() if not t or t[-1] <= now - self.window]:
            del self.failures[key]
        for key in [k for k, until in self.locked_until.items() if until <= now]:
            del self.locked_until[key]
        for table in (self.failures, self.locked_until):
            while len(table) > _MAX_KEYS:
                del table[next(iter(table))]


@dataclass(frozen=True)
class Ticket:
    """An admitted attempt: counted (in flight) before its password is checked."""

    client: str
    user: str


class AuthThrottle:
    """Failed logins per client and per user name.

    Per client: `max_failures` failed logins within `window` seconds lock it out for `lockout`
    seconds (IPv6 clients are counted per /64). Per user: `account_max_failures` from any
    addresses lock the name out for the same time, except from the addresses it logged in from
    before. An attempt counts from the moment it is admitted, before its password is checked,
    so attempts sent in parallel cannot all pass before the first failure is recorded: one
    that could reach a limit waits until the checks ahead of it are decided.
    """

    def __init__(
        self,
        max_failures: int,
        lockout: float,
        *,
        account_max_failures: int | None = None,
        window: float | None = None,
        per_client_checks: int = PER_CLIENT_CHECKS,
        admit_wait: float = ADMIT_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        # Failures older than this are forgotten; by default as long as the lockout itself.
        self.window = window if window is not None else lockout
        self.per_client_checks = per_client_checks
        self.admit_wait = admit_wait
        self._clients = _Failures(max_failures, lockout, self.window, clock)
        self._users = _Failures(
            account_max_failures if account_max_failures is not None else 2 * max_failures,
            lockout,
            self.window,
            clock,
        )
        self._known: dict[str, dict[str, None]] = {}
        # Set (and replaced) whenever a check ends: waiting attempts look again.
        self._changed = asyncio.Event()

    def reconfigure(self, max_failures: int, lockout: float, *, account_max_failures: int) -> None:
        """SIGHUP: new limits from the next attempt on; the failures and lockouts counted so
        far stay (a reload must not be a way to reset a guesser's count). The window follows
        the lockout, as at start."""
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = lockout
        for failures, limit in ((self._clients, max_failures), (self._users, account_max_failures)):
            failures.max_failures = limit
            failures.lockout = lockout
            failures.window = lockout

    @property
    def _failures(self) -> dict[str, deque[float]]:
        return self._clients.failures

    key = staticmethod(client_key)

    def locked(self, ip: IPAddress | None) -> bool:
        return self._clients.locked(self.key(ip))

    def failed(self, ip: IPAddress | None) -> bool:
        """Count a failure of a client; True if this one locked it out."""
        return self._clients.fail(self.key(ip))

    # A successful login does not clear the count: otherwise one known account would let a
    # guesser reset the counter between guesses at other accounts' passwords.

    def _known_for(self, user: str, client: str) -> bool:
        return client in self._known.get(user, {})

    async def admit(self, ip: IPAddress | None, user: str) -> Ticket | Refusal:
        """Wait for a turn to check a password of `user` from `ip`: a Ticket, or a Refusal
        (locked out, or no turn within admit_wait)."""
        client = self.key(ip)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.admit_wait
        while True:
            known = self._known_for(user, client)
            if self._clients.locked(client):
                return Refusal(Reason.AUTH_LOCKED, replies.AUTH_LOCKED)
            if not known and self._users.locked(user):
                return Refusal(Reason.AUTH_ACCOUNT_LOCKED, replies.AUTH_ACCOUNT_LOCKED)
            if (
                self._clients.in_flight[client] < self.per_client_checks
                and not self._clients.full(client)
                and (known or not self._users.full(user))
            ):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Refusal(Reason.AUTH_BUSY, replies.AUTH_BUSY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        self._clients.in_flight[client] += 1
        self._users.in_flight[user] += 1
        return Ticket(client, user)

    def finish(self, ticket: Ticket, ok: bool) -> tuple[bool, bool]:
        """The check of `ticket` is decided; (client locked now, user locked now)."""
        for table, key in ((self._clients, ticket.client), (self._users, ticket.user)):
            table.in_flight[key] -= 1
            if table.in_flight[key] <= 0:
                del table.in_flight[key]
        locks = (False, False)
        if ok:
            known = self._known.setdefault(ticket.user, {})
            known.pop(ticket.client, None)
            known[ticket.client] = None
            while len(known) > _KNOWN_PER_USER:
                del known[next(iter(known))]
            while len(self._known) > _MAX_KEYS:
                del self._known[next(iter(self._known))]
        else:
            locks = (self._clients.fail(ticket.client), self._users.fail(ticket.user))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return locks


class SmtpAuth:
    """The AUTH mechanisms of the gateway's SMTP sessions."""

    def __init__(self, users: Users, throttle: AuthThrottle, *, max_checks: int = 4) -> None:
        self.users = users
        self.throttle = throttle
        # scrypt costs CPU and 16 MiB per check, and runs in the default thread pool that the
        # spool and the store use too: bound the checks running at once; the rest queue.
        self._checks = asyncio.Semaphore(max_checks)
        self.refusals = Tally("smtp.auth_refused", "smtp.auth_refusals", level="info")

    def reconfigure(self, max_checks: int) -> None:
        """SIGHUP: at most `max_checks` checks at once for the attempts admitted from now on
        (checks already running finish under the old bound)."""
        self._checks = asyncio.Semaphore(max_checks)

    def locked(self, server: SMTP) -> bool:
        return self.throttle.locked(peer_of(server))

    def refusal(self, server: SMTP) -> str | None:
        """The reply refusing AUTH at once (the client is locked out), or None to go on."""
        if not self.locked(server):
            return None
        self._tally(server, Refusal(Reason.AUTH_LOCKED, replies.AUTH_LOCKED))
        return replies.AUTH_LOCKED

    def _tally(self, server: SMTP, refusal: Refusal) -> None:
        self.refusals.add(
            refusal.reason, client=self.throttle.key(peer_of(server)), reason=refusal.reason
        )

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
        ip = peer_of(server)
        # Counted from here on, before the check: parallel sessions from one address (or at one
        # user) each wait for the checks ahead of them, and see the lockout those caused.
        ticket = await self.throttle.admit(ip, name)
        if isinstance(ticket, Refusal):
            self._tally(server, ticket)
            return AuthResult(success=False, handled=False, message=ticket.reply)
        check = asyncio.ensure_future(self._verify(name, password))
        try:
            ok = await asyncio.shield(check)
        except asyncio.CancelledError:
            # The client hung up mid-check: the check still runs (a thread cannot be stopped)
            # and still counts when it ends, so hanging up buys no free guesses.
            check.add_done_callback(lambda done: self._finish(ticket, _outcome(done), ip, name))
            raise
        except Exception:
            self._finish(ticket, False, ip, name)
            raise
        self._finish(ticket, ok, ip, name)
        if ok:
            logger.info("smtp.auth_ok", user=name, mechanism=mechanism)
            return AuthResult(success=True, auth_data=name, message=replies.AUTH_OK)
        return await self._refuse(server, mechanism, login, "wrong user name or password")

    async def _verify(self, name: str, password: bytes) -> bool:
        async with self._checks:
            return await asyncio.to_thread(self.users.verify, name, password)

    def _finish(self, ticket: Ticket, ok: bool, ip: IPAddress | None, name: str) -> None:
        client_locked, user_locked = self.throttle.finish(ticket, ok)
        # One line per lockout, whatever number of attempts it then turns away.
        if client_locked:
            logger.warning(
                "smtp.auth_locked",
                reason=Reason.AUTH_LOCKED,
                client=ticket.client,
                seconds=self.throttle.lockout,
            )
        if user_locked:
            logger.warning(
                "smtp.auth_account_locked",
                reason=Reason.AUTH_ACCOUNT_LOCKED,
                user=name[:100],
                client=str(ip),
                seconds=self.throttle.lockout,
            )

    async def _refuse(self, server: SMTP, mechanism: str, login: bytes, why: str) -> AuthResult:
        """A failure decided without a password check (or after one, already counted)."""
        ip = peer_of(server)
        checked = why == "wrong user name or password"
        now_locked = False if checked else self.throttle.failed(ip)
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


def _outcome(check: asyncio.Future[bool]) -> bool:
    return not check.cancelled() and check.exception() is None and check.result()


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
