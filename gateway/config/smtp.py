"""[smtp]: the SMTP listeners, who may send (networks, senders, AUTH), and the limits of a
session and a message.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import phonenumbers
from pydantic import Field, field_validator, model_validator

from gateway.config.values import Address, ListenAddress, Network, Section


class SmtpConfig(Section):
    listen: ListenAddress = Address("127.0.0.1", 2525)
    domain: str = "fax.local"
    hostname: str | None = None
    max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    allowed_networks: tuple[Network, ...] = (
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
    )
    allowed_senders: tuple[str, ...] = ()
    default_country: str = "US"
    max_recipients: int = Field(default=20, ge=1, le=1000)
    # A message with the sender, Message-ID and recipients of one queued this recently is a
    # client's resend after a 250 it never saw (a crash, a cut connection): answered 250 with the
    # first job's id and not faxed again. Copiers and MTAs resend with the same Message-ID.
    # 0 turns it off.
    dedupe_window_seconds: int = Field(default=86400, ge=0)
    # Messages whose documents are read and checked at once (DATA); past it, 451 4.3.2. Each
    # may briefly cost a few times smtp.max_message_bytes of memory.
    max_concurrent_data: int = Field(default=4, ge=1, le=256)
    # Of those, held by one client address (IPv6: per /64) at once; past it, 451 4.3.2, so one
    # client cannot take every slot. Default: half of max_concurrent_data, rounded up.
    max_concurrent_data_per_ip: int = Field(default=2, ge=1, le=256)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_listen: ListenAddress | None = None
    users_file: Path | None = None
    auth_max_failures: int = Field(default=5, ge=1)
    auth_lockout_seconds: int = Field(default=300, ge=1)
    # Failed logins for one user name from any addresses (a guessing run spread over many
    # addresses) before that name is locked out for auth_lockout_seconds; addresses the user
    # logged in from before are spared.
    auth_account_max_failures: int = Field(default=10, ge=1)
    # scrypt checks running at once (each takes tens of ms of CPU and 16 MiB); others wait.
    auth_max_concurrent_checks: int = Field(default=4, ge=1)
    data_timeout_seconds: int = Field(default=300, ge=1)
    # Sessions open at once, in total and per client address (IPv6: per /64); past either a
    # connection gets 421 4.7.0. The total is lowered to half of RLIMIT_NOFILE if above it.
    max_connections: int = Field(default=100, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    # A session is closed (421 4.7.0) this long after its last progress (a message queued, a
    # login, STARTTLS; the greeting at first), or after more junk commands (NOOP, RSET, HELP,
    # VRFY, EXPN, a refused MAIL or RCPT) than max_junk_commands since then.
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    max_junk_commands: int = Field(default=20, ge=1)
    # The shared address of copiers that can mail one fixed address: mail to
    # <subject_address>@<domain> takes its fax numbers from the Subject (gateway/smtp/subject.py).
    # None: off. subject_partial: fax the numbers that pass when others are refused, instead of
    # nothing.
    subject_address: str | None = None
    subject_partial: bool = False

    @field_validator("domain")
    @classmethod
    def _lower_domain(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("subject_address")
    @classmethod
    def _local_part(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().lower()
        # Letters, digits and . _ -: no '+' (it starts an option), no '@' (only the local part),
        # and a letter, so that it can never be read as a fax number.
        if not re.fullmatch(r"[a-z0-9._-]+", text) or not any(c.isalpha() for c in text):
            raise ValueError(
                f"{value!r} is not a local part such as 'fax': letters, digits, '.', '_' and"
                " '-' only, with at least one letter"
            )
        return text

    @field_validator("allowed_networks")
    @classmethod
    def _not_the_internet(cls, value: tuple[Network, ...]) -> tuple[Network, ...]:
        # Clients in these networks fax without a login, at the operator's expense. A range
        # wider than a /8 (IPv6: /16) that is not private spans the public internet: it is a
        # slip (written to "let everyone in" behind a NAT or proxy), never a real network.
        for net in value:
            if net.prefixlen < (8 if net.version == 4 else 16) and not net.is_private:
                raise ValueError(
                    f"{net} spans the public internet and would make the gateway an open relay:"
                    " list the networks of your mail servers, and use AUTH (users_file) for"
                    " clients elsewhere"
                )
        return value

    @field_validator("default_country")
    @classmethod
    def _region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO country code such as 'US' or 'DE'")
        return value.upper()

    @model_validator(mode="before")
    @classmethod
    def _fair_share(cls, data: Any) -> Any:
        # Unset: half of the slots (rounded up) of whatever max_concurrent_data is; a bad value
        # of that is left for its own field to report.
        if isinstance(data, dict) and "max_concurrent_data_per_ip" not in data:
            total = data.get("max_concurrent_data", 4)
            if isinstance(total, int) and not isinstance(total, bool) and total >= 1:
                return {**data, "max_concurrent_data_per_ip": -(-total // 2)}
        return data

    @model_validator(mode="after")
    def _per_ip_within_total(self) -> SmtpConfig:
        if self.max_concurrent_data_per_ip > self.max_concurrent_data:
            raise ValueError(
                f"max_concurrent_data_per_ip ({self.max_concurrent_data_per_ip}) must not exceed"
                f" max_concurrent_data ({self.max_concurrent_data})"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_listen is not None and self.tls_cert is None:
            raise ValueError("tls_listen needs tls_cert and tls_key")
        return self
