"""The carrier: [voxtelesys], its Fax API and the gateway's account there, and [webhooks], how
its status calls are checked and what the reconciler asks it about.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from gateway.config.values import AbsoluteUrl, FaxNumber, Section


class VoxtelesysConfig(Section):
    base_url: AbsoluteUrl = "https://faxapi.voxtelesys.net/api/v1"
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


class WebhooksConfig(Section):
    verify: bool = True
    reconcile_after_seconds: int = Field(default=900, ge=1)
    reconcile_interval_seconds: int = Field(default=300, ge=1)
    # A submitted fax the carrier answers 404 for this long after its POST is lost: reported
    # to its sender as failed, once. Shorter waits risk calling a fax lost the carrier merely
    # has not listed yet.
    unknown_fax_after_seconds: int = Field(default=86400, ge=1)
