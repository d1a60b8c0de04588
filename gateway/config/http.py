"""[http], the one HTTP server (its listener, the webhook and metrics tokens, its connection
limits), and [ui], the status pages it serves under /ui/.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from gateway.config.values import AbsoluteUrl, Address, ListenAddress, Section


class HttpConfig(Section):
    listen: ListenAddress = Address("127.0.0.1", 8025)
    public_url: AbsoluteUrl
    webhook_token: SecretStr
    metrics_token: SecretStr | None = None
    max_webhook_bytes: int = Field(default=64 * 1024, gt=0)
    # Connections open at once (past it: 503 and closed); lowered to a quarter of
    # RLIMIT_NOFILE if above it. A connection that has not sent a whole request head, or sent
    # nothing since its last answer, for idle_timeout_seconds is closed.
    max_connections: int = Field(default=256, ge=1)
    # Of those, open from one client address at once (past it: the same 503), so one client
    # cannot hold them all; above max_connections it is max_connections. The carrier sends
    # webhook bursts from a few addresses: leave it room. Behind a reverse proxy every
    # connection comes from the proxy's address: set it to max_connections there.
    max_connections_per_ip: int = Field(default=64, ge=1)
    idle_timeout_seconds: float = Field(default=15.0, gt=0)
    # A webhook body must arrive whole within this long after its request head (past it: 408
    # and closed), so a body sent a byte at a time cannot hold a connection of the cap.
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("webhook_token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it is the webhook's only password)")
        return value


class UiConfig(Section):
    """The status pages under /ui/ on the gateway's HTTP server (gateway/ui/)."""

    enabled: bool = False
    # Who may log in: this users file (same format, `fax-gateway user --users-file`), else
    # smtp.users_file.
    users_file: Path | None = None
    # Login names with the admin role (everything: all faxes, actions, downloads); every other
    # user of the file is a viewer (the faxes of their own address or routed inbox only).
    admins: tuple[str, ...] = ()
    # Cookies marked Secure are sent by browsers over HTTPS only (and to http://localhost).
    # Leave true behind a TLS proxy; false only to use the pages over plain HTTP elsewhere.
    secure_cookies: bool = True
    # A session ends this long after its last request, and in any case this long after login.
    session_idle_seconds: int = Field(default=3600, ge=60)
    session_max_seconds: int = Field(default=12 * 3600, ge=60)
    page_size: int = Field(default=50, ge=5, le=500)
