"""Document storage: where a job's document is put so the carrier can fetch it by URL.

`create_storage` picks the backend named by `storage.backend`: "s3" (any S3-compatible store,
presigned URLs) or "local" (files under data.dir/media served by the gateway's own HTTP server
with signed, expiring links).
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.storage.base import DocumentMissing, Storage, StorageError, StoredDocument
from gateway.storage.local import LocalStorage
from gateway.storage.s3 import S3Storage
from gateway.storage.secret import load_or_create_secret

__all__ = [
    "DocumentMissing",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageError",
    "StoredDocument",
    "create_storage",
    "load_or_create_secret",
]


def create_storage(config: Config, app: web.Application | None) -> Storage:
    """The configured backend; for "local", its /media route is added to `app` when given.

    Reads (or creates) the secret file: blocking, once, while the daemon is being built.
    """
    data = DataDir(config.data.dir)
    secret = load_or_create_secret(data.root)
    if config.storage.backend == "s3":
        return S3Storage(config.storage, secret)
    storage = LocalStorage(
        data.media,
        config.http.public_url,
        secret,
        config.storage.url_ttl_seconds,
    )
    if app is not None:
        storage.add_routes(app)
    return storage
