"""Local document storage: files under `data.dir/media`, served by the gateway's own HTTP server.

The carrier fetches `{http.public_url}/media/{token}`. The token names the file and when the
link expires, signed with HMAC-SHA256 under a key derived from the gateway secret:
`{expires}.{signature}.{name}` (the name last, so the URL ends in ".pdf" like the carrier's
examples). A bad signature, an expired link, an unknown file or any path trick gets the same
bare 404, so a prober learns nothing.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web

from gateway import log
from gateway.fsutil import fsync_dir, make_private_dirs, write_atomic
from gateway.ops.flood import Tally
from gateway.storage.base import (
    NAME_PATTERN,
    DocumentMissing,
    StorageError,
    StoredDocument,
    content_type_of,
    document_name,
)
from gateway.storage.secret import derive_key

logger = log.get_logger(__name__)

MEDIA_ROUTE = "/media/{token}"
# Errors of a full or failing disk pass; a missing permission or a file in the way does not.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR}


class LocalStorage:
    """Documents as files in one directory, each reachable through a signed, expiring link."""

    def __init__(
        self,
        directory: Path,
        public_url: str,
        secret: bytes,
        url_ttl_seconds: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.public_url = public_url.rstrip("/")
        self.url_ttl_seconds = url_ttl_seconds
        self.clock = clock
        self._name_key = derive_key(secret, "document-name")
        self._token_key = derive_key(secret, "media-token")
        # Anyone can ask for forged links, as fast as we answer: a line each would fill the log.
        self._refusals = Tally("media.refused", "media.refusals", level="info")

    # -- the Storage interface ---------------------------------------------------------------

    async def put(self, job_id: str, data: bytes, content_type: str) -> StoredDocument:
        name = document_name(self._name_key, job_id, content_type)
        try:
            # 0600 like everything under data.dir: the gateway's HTTP server serves these files
            # itself, so no other user (a web server reading the folder) needs them.
            await asyncio.to_thread(write_atomic, self.directory / name, data)
        except OSError as exc:
            raise _error(f"cannot write {self.directory / name}", exc) from None
        logger.info("storage.put", key=name, bytes=len(data))
        return self._stored(name)

    async def url_for(self, key: str, content_type: str) -> StoredDocument:
        path = self._path(key)
        try:
            exists = await asyncio.to_thread(path.is_file)
        except OSError as exc:
            raise _error(f"cannot look up {path}", exc) from None
        if not exists:
            raise DocumentMissing(f"document {key} no longer exists in {self.directory}")
        return self._stored(key)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_remove, path)
        except OSError as exc:
            raise _error(f"cannot delete {path}", exc) from None
        logger.info("storage.deleted", key=key)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(_probe_writable, self.directory)
        except OSError as exc:
            raise _error(f"media directory {self.directory} is not writable", exc) from None

    # -- links -------------------------------------------------------------------------------

    def token_for(self, name: str, expires_at: float) -> str:
        expires = str(math.ceil(expires_at))
        return f"{expires}.{self._sign(expires, name)}.{name}"

    def name_from_token(self, token: str, now: float | None = None) -> str | None:
        """The document a token names, or None if it is malformed, forged or expired."""
        parts = token.split(".", 2)
        if len(parts) != 3:
            return None
        expires, signature, name = parts
        if not expires.isdigit() or len(expires) > 12 or not NAME_PATTERN.fullmatch(name):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(expires, name).encode()):
            return None
        if int(expires) <= (self.clock() if now is None else now):
            return None
        return name

    def add_routes(self, app: web.Application) -> None:
        """GET (and HEAD) /media/{token} on the gateway's HTTP server."""
        app.router.add_get(MEDIA_ROUTE, self.serve)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = self.name_from_token(request.match_info.get("token", ""))
        if name is None:
            self._refusals.add(
                "bad or expired link",
                client=request.remote,
                reason="bad or expired link",
                peer=request.remote,
            )
            raise web.HTTPNotFound()
        path = self.directory / name
        if not await asyncio.to_thread(path.is_file):
            # Only a link we signed gets here: the carrier's own fetches, one line each.
            logger.info("media.refused", reason="no such document", key=name, peer=request.remote)
            raise web.HTTPNotFound()
        logger.info("media.served", key=name, method=request.method, peer=request.remote)
        headers = {
            hdrs.CONTENT_TYPE: content_type_of(name),
            # The document is someone's fax: no shared cache keeps it, no browser reinterprets it.
            hdrs.CACHE_CONTROL: "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
        return web.FileResponse(path, headers=headers)

    # -- helpers -----------------------------------------------------------------------------

    def _stored(self, name: str) -> StoredDocument:
        expires_at = float(math.ceil(self.clock() + self.url_ttl_seconds))
        url = f"{self.public_url}/media/{self.token_for(name, expires_at)}"
        return StoredDocument(key=name, url=url, expires_at=expires_at)

    def _sign(self, expires: str, name: str) -> str:
        mac = hmac.new(self._token_key, f"{expires}.{name}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _path(self, key: str) -> Path:
        # Keys come from our own store; still, a key is never allowed to leave the directory.
        if not NAME_PATTERN.fullmatch(key):
            raise StorageError(f"{key!r} is not a document key", transient=False)
        return self.directory / key


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def _probe_writable(directory: Path) -> None:
    make_private_dirs(directory)
    fd, name = tempfile.mkstemp(prefix=".probe.", dir=directory)
    try:
        os.write(fd, b"probe")
    finally:
        os.close(fd)
        os.unlink(name)


def _error(what: str, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    return StorageError(f"{what}: {reason}", transient=exc.errno in _TRANSIENT_ERRNOS)
