"""What every document storage backend offers: put a job's document, hand out a URL the carrier
can fetch, renew that URL, delete the document, and say whether the storage is usable.

Object names are derived from the job id: `{job_id}-{hmac(job_id)}{ext}`. The HMAC (under the
gateway's secret) makes the name unguessable, and because it depends on the job id alone, an
upload retried after a crash overwrites the same object instead of leaving an orphan.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

# The extension is part of the name (and so of the URL path): the carrier documents its URLs
# as ".../file.pdf" and may well judge the format by it.
EXTENSIONS: dict[str, str] = {
    "application/pdf": ".pdf",
    "image/tiff": ".tiff",
    "image/png": ".png",
    "image/jpeg": ".jpg",
}
CONTENT_TYPES: dict[str, str] = {ext: content_type for content_type, ext in EXTENSIONS.items()}
FALLBACK_TYPE = "application/octet-stream"

# 128 bits of HMAC in hex: unguessable, short enough for a tidy URL.
_NAME_MAC_HEX = 32
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
# What a document name may look like; anything else (slashes, "..", NUL) is never a name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,100}-[0-9a-f]{32}(\.[a-z0-9]{1,5})?")


@dataclass(frozen=True)
class StoredDocument:
    """A stored document: its key (for url_for/delete), a URL to fetch it, when the URL expires."""

    key: str
    url: str
    expires_at: float


class StorageError(Exception):
    """The storage failed; the text says what, `transient` whether retrying later may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class DocumentMissing(StorageError):
    """The stored document is gone (deleted, or removed behind our back): upload it again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class Storage(Protocol):
    async def put(self, job_id: str, data: bytes, content_type: str) -> StoredDocument:
        """Store a job's document (idempotent per job id) and return a fresh URL for it."""
        ...

    async def url_for(self, key: str, content_type: str) -> StoredDocument:
        """A fresh URL for a document stored earlier; DocumentMissing if it is gone."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a document; a missing one is fine."""
        ...

    async def check(self) -> None:
        """Return if the storage is usable now; raise StorageError saying what is wrong."""
        ...


def extension(content_type: str) -> str:
    return EXTENSIONS.get(content_type.split(";")[0].strip().lower(), "")


def content_type_of(name: str) -> str:
    _stem, dot, ext = name.rpartition(".")
    return CONTENT_TYPES.get(f".{ext}", FALLBACK_TYPE) if dot else FALLBACK_TYPE


def document_name(name_key: bytes, job_id: str, content_type: str) -> str:
    """`{job_id}-{mac}{ext}`: the same for every retry of one job, unguessable without the key."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} cannot name a document")
    mac = hmac.new(name_key, job_id.encode(), hashlib.sha256).hexdigest()[:_NAME_MAC_HEX]
    return f"{job_id}-{mac}{extension(content_type)}"
