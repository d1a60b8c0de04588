"""Sending faxes: [fax], what may be dialled and how a fax is sent and resubmitted, [limits],
how much one sender may send, and [senders], each sender's own settings.
"""

from __future__ import annotations

from typing import Literal

import phonenumbers
from pydantic import Field, field_validator

from gateway.config.privacy import PrivacySection
from gateway.config.values import FaxNumber, Section

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


class LimitsConfig(Section):
    faxes_per_sender_per_day: int = Field(default=200, ge=0)  # 0 = no limit


class SenderConfig(PrivacySection):
    """[senders."addr"]: one sender's own settings (an address option wins over cover)."""

    # None: voxtelesys.from_number.
    from_number: FaxNumber | None = None
    # None: cover.enabled; true/false: this sender's faxes do (not) get a cover page.
    cover: bool | None = None
    # None: cover.template. A file name looked up like cover.template (templates.dir first).
    cover_template: str | None = None
    # attach, password_env, password_file (PrivacySection): this sender's delivery reports.
