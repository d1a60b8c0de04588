"""Where files are kept: [data], the data directory and how long finished work stays in it, and
[storage], where documents are published for the carrier to fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.values import Section


class DataConfig(Section):
    dir: Path = Path("/var/lib/fax-gateway")
    # Below this much free space in data.dir, SMTP answers 452 4.3.1 (Postfix's queue_minfree):
    # a message accepted must still have room for its document, its mails and the store.
    min_free_bytes: int = Field(default=64 * 1024**2, ge=0)
    # Finished jobs, faxes, events, mails, inbound faxes and dead letters older than this are
    # purged once a day (gateway/ops/retention.py); 0 keeps them forever.
    retention_days: int = Field(default=30, ge=0)


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
