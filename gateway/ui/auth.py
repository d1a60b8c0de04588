"""Who may use the status pages, with which role, and the throttled password check at login.

Users come from a users file in the SMTP AUTH format (gateway/smtp/users.py): `ui.users_file`,
else `smtp.users_file`. A login name listed in `ui.admins` has the admin role; every other
name is a viewer. Failed logins are throttled exactly like SMTP AUTH (AuthThrottle of
gateway/smtp/auth.py: per client address, IPv6 per /64, and per user name, with the limits of
`smtp.auth_max_failures`, `smtp.auth_account_max_failures` and `smtp.auth_lockout_seconds`),
and scrypt runs in a thread, a few checks at a time. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from gateway import log
from gateway.config import Config
from gateway.ops.flood import Tally
from gateway.smtp.auth import AuthThrottle
from gateway.smtp.policy import IPAddress, Refusal, client_ip
from gateway.smtp.replies import Reason
from gateway.smtp.users import Users

logger = log.get_logger(__name__)


class Role(StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"


# What the login page says for each outcome; one text for a wrong name and a wrong password.
WRONG = "Wrong user name or password."
LOCKED = "Too many failed logins. Try again later."
BUSY = "Too many logins in progress. Try again in a moment."


@dataclass(frozen=True)
class LoginResult:
    user: str | None
    role: Role | None
    problem: str | None


def role_of(config: Config, user: str) -> Role:
    admins = {name.lower() for name in config.ui.admins}
    return Role.ADMIN if user.lower() in admins else Role.VIEWER


def peer_ip(remote: str | None) -> IPAddress | None:
    """The client address of an HTTP request (`request.remote`)."""
    if not remote:
        return None
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    return client_ip((str(ip), 0))


class Logins:
    """The users file and the throttle of one gateway's status pages."""

    def __init__(self, config: Config, *, max_checks: int | None = None) -> None:
        path = config.ui_users_file
        assert path is not None  # Config refuses ui.enabled without a users file
        self.config = config
        self.users = Users(path)
        smtp = config.smtp
        self.throttle = AuthThrottle(
            smtp.auth_max_failures,
            smtp.auth_lockout_seconds,
            account_max_failures=smtp.auth_account_max_failures,
        )
        self._checks = asyncio.Semaphore(max_checks or smtp.auth_max_concurrent_checks)
        # Logins turned away by the lockout come as fast as a client sends them: the first of
        # each reason a minute is logged, then a count (the lockout itself is one line).
        self.refusals = Tally("ui.login_refused", "ui.logins_refused", level="info")

    def load(self) -> int:
        """Read the users file (blocking); raises UsersFileError."""
        return self.users.load()

    async def login(self, remote: str | None, name: str, password: str) -> LoginResult:
        ip = peer_ip(remote)
        if not name or len(name) > 255 or not password or len(password) > 1024:
            return LoginResult(None, None, WRONG)
        ticket = await self.throttle.admit(ip, name)
        if isinstance(ticket, Refusal):
            self.refusals.add(ticket.reason, client=str(ip), user=name[:100], reason=ticket.reason)
            return LoginResult(None, None, BUSY if ticket.reason is Reason.AUTH_BUSY else LOCKED)
        ok = False
        try:
            async with self._checks:
                # shield: a browser that gives up mid-check still has its attempt counted.
                ok = await asyncio.shield(
                    asyncio.to_thread(self.users.verify, name, password.encode("utf-8"))
                )
        finally:
            client_locked, user_locked = self.throttle.finish(ticket, ok)
        if client_locked or user_locked:
            logger.warning(
                "ui.login_locked",
                user=name[:100],
                client=str(ip),
                by="client" if client_locked else "user",
                seconds=self.throttle.lockout,
            )
        if not ok:
            logger.info("ui.login_failed", user=name[:100], client=str(ip))
            return LoginResult(None, None, WRONG)
        role = role_of(self.config, name)
        logger.info("ui.login_ok", user=name, role=role.value, client=str(ip))
        return LoginResult(name, role, None)
