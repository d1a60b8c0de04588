"""Sessions of the status pages: signed cookies naming sessions kept in memory, and CSRF tokens.

The cookie holds a random session id and its HMAC under a key derived from the gateway's
secret (data.dir/secret.key, 0600; gateway/storage/secret.py), so a cookie cannot be forged or
guessed, and is sent Secure (unless `ui.secure_cookies = false`), HttpOnly and SameSite=Strict.
The session itself (who, since when, last seen) stays in this process: logging out ends it at
once, it ends after `ui.session_idle_seconds` without a request and `ui.session_max_seconds`
after login, and a restart of the gateway ends every session (people log in again).

Every form carries a CSRF token: the HMAC of the session id under another derived key, so it
is the same for all forms of one session and useless with any other. The login form, before a
session exists, is tied the same way to a random pre-login cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.storage.secret import derive_key

SESSION_COOKIE = "faxgw_session"
LOGIN_COOKIE = "faxgw_login"
# Sessions kept at once; past it the least recently used goes (a flood of logins by one
# valid user must not grow memory without bound).
MAX_SESSIONS = 10000


@dataclass
class Session:
    id: str
    user: str
    role: str
    created_at: float
    seen_at: float
    csrf: str = field(repr=False)


class Signer:
    """HMACs under keys derived from the gateway's secret, one key per purpose."""

    def __init__(self, secret: bytes) -> None:
        self._cookie = derive_key(secret, "ui-session-cookie")
        self._csrf = derive_key(secret, "ui-csrf")

    def sign(self, value: str) -> str:
        mac = hmac.new(self._cookie, value.encode(), hashlib.sha256).hexdigest()
        return f"{value}.{mac}"

    def unsign(self, signed: str | None) -> str | None:
        """The value of a signed cookie, or None if it is missing or not signed by us."""
        if not signed or "." not in signed or len(signed) > 256:
            return None
        value, _, mac = signed.rpartition(".")
        expected = hmac.new(self._cookie, value.encode(), hashlib.sha256).hexdigest()
        return value if hmac.compare_digest(mac, expected) else None

    def csrf(self, purpose: str, value: str) -> str:
        return hmac.new(self._csrf, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


class Sessions:
    """The open sessions of one gateway process."""

    def __init__(
        self,
        signer: Signer,
        *,
        idle_seconds: float,
        max_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._clock = clock
        self._open: dict[str, Session] = {}

    def start(self, user: str, role: str) -> tuple[Session, str]:
        """A new session for `user` and the cookie value naming it."""
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        session = Session(sid, user, role, now, now, self.signer.csrf("session", sid))
        self._open[sid] = session
        while len(self._open) > MAX_SESSIONS:
            del self._open[next(iter(self._open))]
        return session, self.signer.sign(sid)

    def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names (its last use now), or None."""
        sid = self.signer.unsign(cookie)
        if sid is None:
            return None
        session = self._open.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen_at > self.idle_seconds or now - session.created_at > self.max_seconds:
            del self._open[sid]
            return None
        session.seen_at = now
        # Most recently used last, so the bound above drops the longest unused.
        self._open[sid] = self._open.pop(sid)
        return session

    def end(self, session: Session) -> None:
        self._open.pop(session.id, None)

    def revise(self, role_for: Callable[[str], str | None]) -> None:
        """After a reload: each session takes its user's role now, or ends (None: the user
        is no longer in the users file)."""
        for sid, session in list(self._open.items()):
            role = role_for(session.user)
            if role is None:
                del self._open[sid]
            else:
                session.role = role

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf, token or "")

    def login_nonce(self) -> tuple[str, str]:
        """A fresh pre-login nonce: (cookie value, the token its login form carries)."""
        nonce = secrets.token_urlsafe(24)
        return self.signer.sign(nonce), self.signer.csrf("login", nonce)

    def login_token(self, cookie: str | None) -> str | None:
        """The token the login form must carry for this pre-login cookie, or None."""
        nonce = self.signer.unsign(cookie)
        return None if nonce is None else self.signer.csrf("login", nonce)

    def __len__(self) -> int:
        return len(self._open)
