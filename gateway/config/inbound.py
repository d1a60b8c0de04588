"""[inbound]: where received faxes are mailed (default recipients and routes by number), in
which form, and how they are downloaded and archived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from gateway.config.privacy import ATTACH_ENCRYPTED, ATTACH_PDF, AttachMode, PrivacySection
from gateway.config.values import EmailAddress, FaxNumber


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
