"""How the sandbox carrier behaves: API key, webhook target, timing, limits, scripted numbers.

Scripted numbers are fictional (the 555-01xx block NANP reserves for fiction, in area code
201) and valid in libphonenumber, so a gateway in strict number mode accepts them:

    +12015550166  fails with 5109  far end is not able to receive (busy, no fax tone)
    +12015550177  fails with 5121  no response after sending a page (line dropped mid-fax)
    +12015550188  fails with 5108  far end is not compatible (permanent: do not retry)

Every other number is delivered. `--fail NUMBER=CODE` adds or replaces entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_API_KEY = "sandbox-api-key"
DEFAULT_LISTEN = "127.0.0.1:8099"
API_PREFIX = "/api/v1"
CONTROL_PREFIX = "/_sandbox"

DEFAULT_OUTCOMES: Mapping[str, int] = MappingProxyType(
    {
        "+12015550166": 5109,
        "+12015550177": 5121,
        "+12015550188": 5108,
    }
)

# The real carrier's download limit is not documented; 20 MiB is above any fax a person sends
# (a 50-page scan at fax resolution is a few MiB) and low enough to notice a runaway file.
DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024

# Seconds of call time reported per delivered page, a typical 14.4k fax transmission rate.
SECONDS_PER_PAGE = 30

WEBHOOK_METHODS = ("POST", "GET")


@dataclass(frozen=True)
class SandboxSettings:
    api_key: str = DEFAULT_API_KEY
    webhook_url: str | None = None
    webhook_method: str = "POST"
    # Seconds between the steps queued -> delivering -> final (and receiving -> received).
    delay: float = 2.0
    page_size: int = 20
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    download_timeout: float = 30.0
    # Destination number (E.164) -> fax error code it always fails with.
    outcomes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_OUTCOMES))
    # Webhooks not answered 2xx are sent again, like a real carrier, this many times in all.
    webhook_attempts: int = 5
    webhook_min_delay: float = 1.0
    webhook_max_delay: float = 60.0
    webhook_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.webhook_method not in WEBHOOK_METHODS:
            raise ValueError(f"webhook_method must be POST or GET, not {self.webhook_method!r}")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        if self.max_download_bytes < 1:
            raise ValueError("max_download_bytes must be at least 1")
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        for number, code in self.outcomes.items():
            if not number.startswith("+") or not number[1:].isdigit():
                raise ValueError(f"scripted number {number!r} must be E.164 like +12015550166")
            if not isinstance(code, int) or isinstance(code, bool):
                raise ValueError(f"scripted code for {number} must be a number")

    def outcome_for(self, digits: str) -> int | None:
        """The scripted error code for a destination (digits, as the carrier stores them)."""
        return self.outcomes.get("+" + digits.lstrip("+"))
