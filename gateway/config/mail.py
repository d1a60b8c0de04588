"""The mail the gateway sends: [relay], the SMTP relay (or Maildir) it goes out through,
[notify], which reports and copies are sent and how, and [templates], the folder whose templates
override the built-in ones.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.addresses import split_mailbox
from gateway.config.privacy import ATTACH_PDF, AttachMode, PrivacySection
from gateway.config.values import EmailAddress, FromAddress, Section


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


class TemplatesConfig(Section):
    dir: Path | None = None
