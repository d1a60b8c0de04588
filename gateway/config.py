"""Typed, frozen configuration: one TOML file, with secrets that may come from the environment.

Every section is a frozen pydantic model that forbids unknown keys, so a typo is an error at
start-up rather than a silently ignored setting. `load_config` turns every problem into one line
that names the key (`smtp.listen: ...`) and raises ConfigError with all of them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.addresses import clean_address, clean_mailbox, split_mailbox
from gateway.numbers import NumberError, parse_fax_number

DEFAULT_PATH = Path("/etc/fax-gateway/gateway.toml")
CONFIG_ENV = "FAXGW_CONFIG"

# Secrets that may come from the environment; they win over the file.
SECRET_ENV: dict[str, tuple[str, str]] = {
    "VOXTELESYS_API_KEY": ("voxtelesys", "api_key"),
    "FAXGW_WEBHOOK_TOKEN": ("http", "webhook_token"),
    "FAXGW_RELAY_PASSWORD": ("relay", "password"),
    "FAXGW_STORE_DSN": ("store", "dsn"),
}


# Keys whose values are secrets (SecretStr): never shown in a problem.
_SECRET_KEYS = frozenset({"api_key", "webhook_token", "metrics_token", "password", "dsn"})


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Address(NamedTuple):
    """A listen address, written "host:port" or "[v6]:port" in the file."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_address(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not an address: expected '[ipv6]:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not an address: expected 'host:port'")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not an address: port must be a number from 0 to 65535")
    if not host:
        raise ValueError(f"{value!r} is not an address: host is missing")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        label_ok = all(part and part.replace("-", "").isalnum() for part in host.split("."))
        if not label_ok:
            raise ValueError(f"{value!r} is not an address: bad host {host!r}") from None
    return Address(host, int(port))


ListenAddress = Annotated[Address, BeforeValidator(_parse_address)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _e164(value: Any) -> Any:
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return value
    try:
        # Configured numbers are the operator's own and must be real: always strict.
        return parse_fax_number(value, "US" if not value.startswith("+") else "ZZ")
    except NumberError as exc:
        raise ValueError(str(exc)) from None


FaxNumber = Annotated[str, BeforeValidator(_e164)]


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    return value.rstrip("/")


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c in value for c in " \r\n<>,;"):
        raise ValueError(f"{value!r} is not an email address")
    # The same test every mail's addresses pass when it is built: an address that passed here
    # but not there would fail each report at run time instead of the load.
    try:
        clean_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an email address") from None
    return value


EmailAddress = Annotated[str, BeforeValidator(lambda v: _email(v) if isinstance(v, str) else v)]


def _mailbox(value: str) -> str:
    # A From may carry a display name ("Fax Gateway <fax@example.com>"): what every operator
    # writes. Kept normalised (name quoted if it needs it) so build_message reads it back the
    # same; the bare address inside is held to _email's rule like every other address.
    try:
        _name, address = split_mailbox(value)
        _email(address)
        return clean_mailbox(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


# Where the configuration takes the From of the gateway's mail: an addr-spec or `Name <addr>`.
# Envelope addresses stay EmailAddress.
FromAddress = Annotated[str, BeforeValidator(lambda v: _mailbox(v) if isinstance(v, str) else v)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    # VRFY, EXPN) than max_junk_commands since then.
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

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_listen is not None and self.tls_cert is None:
            raise ValueError("tls_listen needs tls_cert and tls_key")
        return self


class HttpConfig(Section):
    listen: ListenAddress = Address("127.0.0.1", 8025)
    public_url: Annotated[
        str, BeforeValidator(lambda v: _absolute_url(v) if isinstance(v, str) else v)
    ]
    webhook_token: SecretStr
    metrics_token: SecretStr | None = None
    max_webhook_bytes: int = Field(default=64 * 1024, gt=0)
    # Connections open at once (past it: 503 and closed); lowered to a quarter of
    # RLIMIT_NOFILE if above it. A connection that has not sent a whole request head, or sent
    # nothing since its last answer, for idle_timeout_seconds is closed.
    max_connections: int = Field(default=256, ge=1)
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


class VoxtelesysConfig(Section):
    base_url: Annotated[
        str, BeforeValidator(lambda v: _absolute_url(v) if isinstance(v, str) else v)
    ] = "https://faxapi.voxtelesys.net/api/v1"
    api_key: SecretStr
    from_number: FaxNumber
    attempts: int = Field(default=3, ge=1, le=10)
    timeout_seconds: float = Field(default=30.0, gt=0)
    # POST /faxes requests under way at once: one fax slow at the carrier, or retrying its 500s,
    # must not hold the others. The documentation names no rate limit; 4 is gentle.
    max_concurrent_posts: int = Field(default=4, ge=1, le=64)
    # The documentation lists `queued`, `delivering` and `failed` but no success word; these are
    # the ones seen across fax APIs. Operators can add what their account reports.
    success_statuses: tuple[str, ...] = ("delivered", "sent", "success", "completed", "received")


class StorageConfig(Section):
    backend: Literal["s3", "local"] = "local"
    bucket: str | None = None
    prefix: str = "faxes/"
    endpoint_url: str | None = None
    region: str | None = None
    url_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    # How long a document stays after every fax of its job is final (0 = delete at once).
    retention_seconds: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> StorageConfig:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("backend 's3' needs a bucket")
        return self


class RelayConfig(Section):
    backend: Literal["smtp", "maildir"] = "smtp"
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_address: FromAddress
    maildir: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @property
    def envelope_sender(self) -> str:
        """The bare address of from_address: MAIL FROM and Return-Path take no display name."""
        return split_mailbox(self.from_address)[1]

    @model_validator(mode="after")
    def _consistent(self) -> RelayConfig:
        if self.backend == "maildir" and self.maildir is None:
            raise ValueError("backend 'maildir' needs maildir = <path>")
        if self.starttls and self.tls:
            raise ValueError("choose starttls or tls (implicit), not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be set together")
        return self


# What a mail carries of a fax (delivery reports, inbound faxes): the document as a PDF, the
# document as a PDF encrypted with a password (AES-256, PDF 2.0 / R6), or no document at all.
AttachMode = Literal["pdf", "encrypted-pdf", "none"]
ATTACH_PDF = "pdf"
ATTACH_ENCRYPTED = "encrypted-pdf"
ATTACH_NONE = "none"

# Shortest password an encrypted PDF is locked with: a short one is guessed offline in hours.
MIN_PDF_PASSWORD_CHARS = 8
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PrivacySection(Section):
    """A privacy mode: `attach`, and for "encrypted-pdf" where its password is kept.

    The password is never written in the configuration itself: password_env names an
    environment variable, password_file a file (read at load and at each reload, trailing
    newline dropped). It is held as a SecretStr (`password`) and registered with the log
    redactor with the other secrets. `attach` None (senders, routes) means: as the section
    above says.
    """

    attach: AttachMode | None = None
    password_env: str | None = None
    password_file: Path | None = None
    _password: SecretStr | None = PrivateAttr(default=None)

    @property
    def password(self) -> SecretStr | None:
        return self._password

    @model_validator(mode="after")
    def _password_source(self, info: ValidationInfo) -> PrivacySection:
        named = [key for key in ("password_env", "password_file") if getattr(self, key)]
        if self.attach != ATTACH_ENCRYPTED:
            if named:
                raise ValueError(f"{named[0]} is only used with attach = 'encrypted-pdf'")
            return self
        if len(named) != 1:
            raise ValueError(
                "attach = 'encrypted-pdf' needs its password from password_env or password_file"
                " (one of them; never the password itself)"
            )
        env = (info.context or {}).get("env")
        self._password = SecretStr(_read_password(self.password_env, self.password_file, env))
        return self


def _read_password(variable: str | None, path: Path | None, env: Mapping[str, str] | None) -> str:
    """The password from the environment or its file; errors name where, never the value."""
    if variable is not None:
        if not _ENV_NAME.fullmatch(variable):
            raise ValueError(f"password_env {variable!r} is not an environment variable name")
        value = (os.environ if env is None else env).get(variable, "")
        where = f"${variable}"
    else:
        assert path is not None
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"password_file {str(path)!r} cannot be read: {reason}") from None
        where = f"password_file {str(path)!r}"
    if not value:
        raise ValueError(f"{where} is empty or not set: it must hold the PDF password")
    if len(value) < MIN_PDF_PASSWORD_CHARS:
        raise ValueError(f"the password in {where} is shorter than {MIN_PDF_PASSWORD_CHARS}")
    return value


def _route_table(value: Any) -> Any:
    # The list form `"+12015550101" = ["a@x"]` is a route with recipients only.
    return {"recipients": value} if isinstance(value, list | tuple) else value


class RouteConfig(PrivacySection):
    """Where faxes to one number go, and in which privacy mode (None: inbound.attach)."""

    recipients: tuple[EmailAddress, ...] = ()


InboundRoute = Annotated[RouteConfig, BeforeValidator(_route_table)]


class InboundConfig(PrivacySection):
    default_recipients: tuple[EmailAddress, ...] = ()
    # `"+1..." = ["a@x"]`, or a table [inbound.routes."+1..."] with recipients, attach, password.
    routes: dict[FaxNumber, InboundRoute] = Field(default_factory=dict)
    attach: AttachMode = ATTACH_PDF
    attach_format: Literal["pdf", "tiff", "both"] = "pdf"
    # A received TIFF of more frames than this (counted along its IFD chain, decoding nothing)
    # is mailed as the TIFF it is, not converted: decoding every frame of a hostile file would
    # cost minutes of CPU.
    max_pages: int = Field(default=250, ge=1, le=65535)
    max_attempts: int = Field(default=10, ge=1)
    max_download_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    download_timeout_seconds: float = Field(default=60.0, gt=0)
    # Fetch media links that point at loopback, private, link-local or reserved addresses
    # (the carrier's own origin, voxtelesys.base_url, is always allowed): labs only, since a
    # forged or redirected link would otherwise mail the gateway's neighbours' pages.
    allow_private_media: bool = False
    # A copy of every received fax (PDF) with a JSON sidecar, written before its mail is queued:
    # in a folder, and/or under a prefix of storage.bucket (storage.backend "s3").
    archive_dir: Path | None = None
    archive_s3_prefix: str | None = None
    # Days an archived fax is kept (by the daily purge); None: forever.
    archive_retention_days: int | None = Field(default=None, ge=1)

    @field_validator("archive_s3_prefix")
    @classmethod
    def _archive_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r} is not an object key prefix such as 'archive/'")
        return value

    def route(self, to_number: str) -> RouteConfig | None:
        """The route of the number called ('+' optional), or None."""
        return self.routes.get(to_number if to_number.startswith("+") else "+" + to_number)

    def recipients_for(self, to_number: str) -> tuple[str, ...]:
        """Where a fax to `to_number` is mailed: its route's recipients, else the default ones."""
        route = self.route(to_number)
        return route.recipients if route and route.recipients else self.default_recipients

    @model_validator(mode="after")
    def _no_tiff_with_encryption(self) -> InboundConfig:
        # Only a PDF can be locked with a password: a TIFF beside it would carry the fax open.
        if self.attach_format == "pdf":
            return self
        if self.attach == ATTACH_ENCRYPTED:
            raise ValueError(
                f"attach_format {self.attach_format!r} is not offered with attach ="
                " 'encrypted-pdf' (a TIFF cannot be encrypted): use attach_format = 'pdf'"
            )
        for number, route in self.routes.items():
            if route.attach == ATTACH_ENCRYPTED:
                raise ValueError(
                    f"routes.{number} has attach = 'encrypted-pdf', which attach_format"
                    f" {self.attach_format!r} does not allow (a TIFF cannot be encrypted):"
                    " use attach_format = 'pdf'"
                )
        return self


class DataConfig(Section):
    dir: Path = Path("/var/lib/fax-gateway")
    # Below this much free space in data.dir, SMTP answers 452 4.3.1 (Postfix's queue_minfree):
    # a message accepted must still have room for its document, its mails and the store.
    min_free_bytes: int = Field(default=64 * 1024**2, ge=0)
    # Finished jobs, faxes, events, mails, inbound faxes and dead letters older than this are
    # purged once a day (gateway/ops/retention.py); 0 keeps them forever.
    retention_days: int = Field(default=30, ge=0)


# Ranges a misconfigured sender list must not be able to dial: NANP premium-rate 900 and 976,
# international premium rate (+979), satellite and international networks (+870, +881, +882,
# +883) whose per-minute rates are among the highest and most abused in toll fraud.
DEFAULT_BLOCKED_PREFIXES = ("+1900", "+1976", "+979", "+870", "+881", "+882", "+883")


class FaxConfig(Section):
    blocked_prefixes: tuple[str, ...] = DEFAULT_BLOCKED_PREFIXES
    # None means: only smtp.default_country (resolved in Config).
    allowed_countries: tuple[str, ...] | None = None
    max_pages: int = Field(default=50, ge=1)
    paper: Literal["letter", "a4"] = "letter"
    # "strict" asks whether a number is assigned; "possible" checks length only (demo, labs).
    number_check: Literal["strict", "possible"] = "strict"
    # Resubmission of faxes that failed on the line (busy, no answer, a dropped call): how many
    # more times (0 = never) and how long after the failure (gateway/outbound/resubmit.py).
    resubmit_attempts: int = Field(default=0, ge=0, le=10)
    resubmit_delay_seconds: float = Field(default=600.0, ge=1)

    @field_validator("blocked_prefixes")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not prefix.startswith("+") or not prefix[1:].isdigit():
                raise ValueError(f"{prefix!r} is not a prefix like '+1900'")
        return value

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        upper = tuple(v.upper() for v in value)
        for code in upper:
            if code not in phonenumbers.SUPPORTED_REGIONS and code != "*":
                raise ValueError(f"{code!r} is not an ISO country code")
        return upper


class DocumentsConfig(Section):
    """Reading documents: the budget of a document worker process (gateway/document/workers.py;
    reading one message at DATA, or building one job's document, may cost at most this much),
    and the conversion of office files."""

    # Address space of one worker (RLIMIT_AS); Python and the document libraries take ~110 MB
    # of it before any document. Past it: 554 5.3.4 at DATA, a failed job at prepare.
    worker_memory_mb: int = Field(default=768, ge=256, le=65536)
    # Wall-clock time of one request; past it the worker is killed, with the same outcome.
    worker_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    # Office files and HTML attachments become PDF with LibreOffice (gateway/document/office.py):
    # off by default, since every such file is then opened by a large office suite. LibreOffice
    # runs as its own process group under its own time limit, not under the worker's memory
    # budget (its address space alone is larger).
    convert_office: bool = False
    convert_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_concurrent_conversions: int = Field(default=2, ge=1, le=32)
    # Office files one message may carry: more are refused (554 5.6.0), not each given
    # LibreOffice's time.
    max_office_files: int = Field(default=5, ge=1, le=100)
    # The largest file LibreOffice may write (RLIMIT_FSIZE): a document whose PDF would be
    # larger is refused (554 5.6.0).
    convert_max_output_mb: int = Field(default=100, ge=1, le=4096)
    # The LibreOffice program: a name looked up in PATH, or an absolute path.
    libreoffice: str = Field(default="soffice", min_length=1)


class LimitsConfig(Section):
    faxes_per_sender_per_day: int = Field(default=200, ge=0)  # 0 = no limit


class CoverConfig(Section):
    enabled: bool = False
    body_only: bool = False
    template: str = "cover.txt.j2"

    def for_message(self, enabled: bool | None, template: str | None) -> CoverConfig:
        """These settings as one message has them: its own cover choice and template (from an
        address option or [senders]) where it has one."""
        changes: dict[str, object] = {}
        if enabled is not None:
            changes["enabled"] = enabled
        if template is not None:
            changes["template"] = template
        return self.model_copy(update=changes) if changes else self


class NotifyConfig(PrivacySection):
    on_success: bool = True
    on_failure: bool = True
    on_queued: bool = False
    # An interim report when a failed fax will be resubmitted ("will try again at 14:05").
    on_retry: bool = False
    attach_document: bool = True
    cc: tuple[EmailAddress, ...] = ()
    # The administrator's copy (gateway/admin/): a blind copy of every failure report, a mail
    # for every dead letter and held job, and a daily summary at summary_time (HH:MM, in
    # `timezone`).
    admin: tuple[EmailAddress, ...] = ()
    summary_time: str = "07:00"
    # How delivery reports carry the document and the transmission report (senders may differ).
    attach: AttachMode = ATTACH_PDF
    # A fax machine's confirmation page (PDF) with every delivered or failed report.
    transmission_report: bool = True
    # The zone the transmission report's date and time are printed in, and summary_time is
    # read in (IANA name: "America/New_York").
    timezone: str = "UTC"

    @field_validator("summary_time")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        hours, sep, minutes = value.partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
            raise ValueError(f"{value!r} is not a time of day such as '07:00'")
        if not (0 <= int(hours) <= 23 and 0 <= int(minutes) <= 59):
            raise ValueError(f"{value!r} is not a time of day such as '07:00'")
        return f"{int(hours):02d}:{minutes}"

    @property
    def summary_minutes(self) -> int:
        """summary_time as minutes after midnight (in `timezone`)."""
        hours, _, minutes = self.summary_time.partition(":")
        return int(hours) * 60 + int(minutes)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value == "UTC":
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone such as 'UTC' or 'Europe/Berlin'"
            ) from None
        return value

    @property
    def zone(self) -> tzinfo:
        # UTC needs no time zone database (a minimal system may have none).
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)


class WebhooksConfig(Section):
    verify: bool = True
    reconcile_after_seconds: int = Field(default=900, ge=1)
    reconcile_interval_seconds: int = Field(default=300, ge=1)
    # A submitted fax the carrier answers 404 for this long after its POST is lost: reported
    # to its sender as failed, once. Shorter waits risk calling a fax lost the carrier merely
    # has not listed yet.
    unknown_fax_after_seconds: int = Field(default=86400, ge=1)


class TemplatesConfig(Section):
    dir: Path | None = None


class QueueConfig(Section):
    """Retry policy of every stage, after Postfix: doubling delay, bounded, with a lifetime."""

    min_backoff_seconds: float = Field(default=30.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    lifetime_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    # Pickups that did not finish (crash mid-step) before a job is held for a human.
    max_pickups: int = Field(default=3, ge=1)
    scan_interval_seconds: float = Field(default=30.0, gt=0)
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)


class StoreConfig(Section):
    """Where the queues live: SQLite in data.dir (one node), or a PostgreSQL server that
    several nodes share (docs/cluster.md)."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # postgresql://user:password@host:port/database?sslmode=... (or libpq's key=value form);
    # a secret as a whole, since it may carry the password (also from FAXGW_STORE_DSN).
    dsn: SecretStr | None = None
    # How long a node's claim on a queue item keeps the other nodes off it; a node that died
    # mid-step leaves its items to the others after this long (postgresql only: one SQLite
    # process takes back a dead predecessor's claims at start-up).
    lease_seconds: float = Field(default=60.0, gt=0)
    pool_size: int = Field(default=4, ge=1, le=64)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    statement_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> StoreConfig:
        if self.backend == "postgresql":
            if self.dsn is None or not self.dsn.get_secret_value().strip():
                raise ValueError(
                    'backend "postgresql" needs store.dsn (or FAXGW_STORE_DSN), e.g.'
                    ' "postgresql://fax-gateway@db.example.com/fax-gateway"'
                )
            _check_dsn(self.dsn.get_secret_value())
        return self

    @property
    def dsn_password(self) -> str | None:
        """The password inside the DSN, if it has one (for the log redactor)."""
        if self.dsn is None:
            return None
        from psycopg import conninfo

        try:
            return conninfo.conninfo_to_dict(self.dsn.get_secret_value()).get("password")
        except Exception:
            return None


def _check_dsn(dsn: str) -> None:
    """A DSN libpq can parse; the problem is said without repeating the DSN (its password)."""
    from psycopg import ProgrammingError, conninfo

    if "://" in dsn and not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError("store.dsn must be a postgresql:// URL or libpq key=value pairs")
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError:
        raise ValueError("store.dsn is not a DSN libpq can read") from None


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


class SenderConfig(PrivacySection):
    """[senders."addr"]: one sender's own settings (an address option wins over cover)."""

    # None: voxtelesys.from_number.
    from_number: FaxNumber | None = None
    # None: cover.enabled; true/false: this sender's faxes do (not) get a cover page.
    cover: bool | None = None
    # None: cover.template. A file name looked up like cover.template (templates.dir first).
    cover_template: str | None = None
    # attach, password_env, password_file (PrivacySection): this sender's delivery reports.


class Config(Section):
    smtp: SmtpConfig = SmtpConfig()
    http: HttpConfig
    voxtelesys: VoxtelesysConfig
    storage: StorageConfig = StorageConfig()
    relay: RelayConfig
    inbound: InboundConfig = InboundConfig()
    data: DataConfig = DataConfig()
    fax: FaxConfig = FaxConfig()
    limits: LimitsConfig = LimitsConfig()
    cover: CoverConfig = CoverConfig()
    documents: DocumentsConfig = DocumentsConfig()
    notify: NotifyConfig = NotifyConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    templates: TemplatesConfig = TemplatesConfig()
    queue: QueueConfig = QueueConfig()
    ui: UiConfig = UiConfig()
    store: StoreConfig = StoreConfig()
    senders: dict[str, SenderConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ui_users(self) -> Config:
        if self.ui.enabled and self.ui_users_file is None:
            raise ValueError("ui.enabled needs ui.users_file or smtp.users_file (who may log in)")
        return self

    @property
    def ui_users_file(self) -> Path | None:
        """Who may log in to /ui/: ui.users_file, else smtp.users_file."""
        return self.ui.users_file or self.smtp.users_file

    @field_validator("senders")
    @classmethod
    def _lower_senders(cls, value: dict[str, SenderConfig]) -> dict[str, SenderConfig]:
        for address in value:
            _email(address)
        return {address.lower(): sender for address, sender in value.items()}

    @model_validator(mode="after")
    def _archive_bucket(self) -> Config:
        if self.inbound.archive_s3_prefix is not None and self.storage.backend != "s3":
            raise ValueError(
                "inbound.archive_s3_prefix needs storage.backend = 's3' (the archive is kept in"
                " storage.bucket)"
            )
        return self

    @property
    def allowed_countries(self) -> tuple[str, ...]:
        return self.fax.allowed_countries or (self.smtp.default_country,)

    def secrets(self) -> list[str]:
        """Every secret value in this configuration, for the log redactor."""
        values = [self.voxtelesys.api_key, self.http.webhook_token]
        values += [s for s in (self.relay.password, self.http.metrics_token) if s is not None]
        privacy = [self.notify, self.inbound, *self.inbound.routes.values(), *self.senders.values()]
        values += [p.password for p in privacy if p.password is not None]
        if self.store.dsn is not None:
            values.append(self.store.dsn)
        found = [s.get_secret_value() for s in values if s.get_secret_value()]
        password = self.store.dsn_password
        return [*found, password] if password else found


def resolve_path(cli_path: str | Path | None, env: Mapping[str, str] | None = None) -> Path:
    """--config, else $FAXGW_CONFIG, else /etc/fax-gateway/gateway.toml."""
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_PATH


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return config_from_dict(data, env)


def config_from_dict(data: dict[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for variable, (section, key) in SECRET_ENV.items():
        if env.get(variable):
            section_data = data.setdefault(section, {})
            if isinstance(section_data, dict):
                section_data[key] = env[variable]
    try:
        # The environment goes along for the PDF passwords (password_env).
        return Config.model_validate(data, context={"env": env})
    except ValidationError as exc:
        raise ConfigError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    # Drop pydantic's internal location parts (validator names, union branches).
    loc = [p for p in loc if not p.startswith(("function-", "json-or-python")) and "[" not in p]
    key = ".".join(_quote(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (misspelt, or in the wrong section?)"
    if kind == "missing":
        what = "section" if len(loc) == 1 and loc[0] in Config.model_fields else "key"
        return f"{key}: required {what} is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        # Problems are printed and logged: a secret's value is never repeated, whatever it is.
        got = "" if loc and loc[-1] in _SECRET_KEYS else f" (got {error.get('input')!r})"
        message = f"wrong type: {message}{got}"
    return f"{key}: {message}"


def _quote(part: str) -> str:
    return part if part.replace("_", "").isalnum() else f'"{part}"'
