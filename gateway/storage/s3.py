"""S3 document storage: a private bucket, one object per job, presigned GET URLs for the carrier.

Any S3-compatible store works through `storage.endpoint_url`. Credentials come only from
boto3's standard chain (environment, ~/.aws, instance role), never from the gateway's file.
Every boto3 call runs in a thread; timeouts and a small retry budget keep an S3 outage from
holding a worker for long: the job is deferred and retried with backoff from the store instead.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from gateway import log
from gateway.config import StorageConfig
from gateway.storage.base import (
    NAME_PATTERN,
    DocumentMissing,
    StorageError,
    StoredDocument,
    document_name,
)
from gateway.storage.secret import derive_key

logger = log.get_logger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5.0
# Generous enough for a 25 MB document over a modest uplink, short enough to notice a hang.
READ_TIMEOUT_SECONDS = 60.0
# boto3 "standard" retries: this many attempts in all, with its own short backoff.
MAX_ATTEMPTS = 3

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
}
_DENIED_CODES = {
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}


class S3Storage:
    """Documents as objects under `storage.prefix` in `storage.bucket`."""

    def __init__(
        self,
        config: StorageConfig,
        secret: bytes,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.bucket:
            raise ValueError("S3 storage needs a bucket")
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.endpoint_url = config.endpoint_url
        self.region = config.region
        self.url_ttl_seconds = config.url_ttl_seconds
        self.clock = clock
        self._name_key = derive_key(secret, "document-name")
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    # -- the Storage interface ---------------------------------------------------------------

    async def put(self, job_id: str, data: bytes, content_type: str) -> StoredDocument:
        name = document_name(self._name_key, job_id, content_type)
        key = self.prefix + name

        def upload(client: Any) -> str:
            # No ACL argument: the object inherits the bucket's privacy. Never public-read;
            # the presigned URL is the carrier's only way in.
            client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentDisposition=f'inline; filename="{name}"',
                CacheControl="private, no-store",
            )
            return self._presign(client, key, content_type)

        signed_from = self._now()
        url = await self._call("put", upload)
        logger.info("storage.put", key=key, bytes=len(data))
        return self._stored(key, url, signed_from)

    async def url_for(self, key: str, content_type: str) -> StoredDocument:
        self._check_key(key)

        def renew(client: Any) -> str:
            try:
                client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND_CODES:
                    raise DocumentMissing(
                        f"document {key} no longer exists in bucket '{self.bucket}'"
                    ) from None
                raise
            return self._presign(client, key, content_type)

        signed_from = self._now()
        return self._stored(key, await self._call("url_for", renew), signed_from)

    async def delete(self, key: str) -> None:
        self._check_key(key)
        # S3 answers 204 for a key that is not there: deleting twice is fine.
        await self._call("delete", lambda client: client.delete_object(Bucket=self.bucket, Key=key))
        logger.info("storage.deleted", key=key)

    async def check(self) -> None:
        await self._call("check", lambda client: client.head_bucket(Bucket=self.bucket))

    # -- other objects of the gateway in the same bucket (the inbound archive) ---------------

    async def put_object(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` as `key` (overwriting: the same key written again is one object)."""
        self._check_other_key(key)
        await self._call(
            "put",
            lambda client: client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl="private, no-store",
            ),
        )

    async def objects_under(self, prefix: str) -> list[tuple[str, float]]:
        """(key, last modified as a Unix time) of every object under `prefix`."""

        def listing(client: Any) -> list[tuple[str, float]]:
            found: list[tuple[str, float]] = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found += [
                    (o["Key"], o["LastModified"].timestamp()) for o in page.get("Contents", [])
                ]
            return found

        return await self._call("list", listing)

    async def delete_object(self, key: str) -> None:
        self._check_other_key(key)
        await self._call("delete", lambda client: client.delete_object(Bucket=self.bucket, Key=key))

    def _check_other_key(self, key: str) -> None:
        # The documents under storage.prefix are the cleanup's alone.
        if not key or (
            key.startswith(self.prefix) and NAME_PATTERN.fullmatch(key[len(self.prefix) :])
        ):
            raise StorageError(f"{key!r} is not a key for other objects", transient=False)

    async def close(self) -> None:
        """Close the client's connection pool (the daemon's stop; tests)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # -- helpers -----------------------------------------------------------------------------

    def _presign(self, client: Any, key: str, content_type: str) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if content_type:
            # Served as this type whatever a tool may have set on the object since.
            params["ResponseContentType"] = content_type
        # With temporary credentials (an instance role) the URL stops working when they expire,
        # possibly before url_ttl_seconds; the submit stage renews URLs close to expiry anyway.
        url: str = client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.url_ttl_seconds
        )
        return url

    def _now(self) -> float:
        # SigV4 dates have whole seconds (truncated), so the URL's validity starts there.
        return float(math.floor(self.clock()))

    def _stored(self, key: str, url: str, signed_from: float) -> StoredDocument:
        # Counted from before the call: the URL was signed later, so it is valid at least until
        # the expiry we record, never shorter.
        return StoredDocument(key=key, url=url, expires_at=signed_from + self.url_ttl_seconds)

    def _check_key(self, key: str) -> None:
        if not key.startswith(self.prefix) or not NAME_PATTERN.fullmatch(key[len(self.prefix) :]):
            raise StorageError(f"{key!r} is not a document key of this gateway", transient=False)

    async def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self._run, operation, fn)

    def _run(self, operation: str, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self._get_client())
        except StorageError:
            raise
        except ClientError as exc:
            raise self._client_error(operation, exc) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StorageError(
                f"S3 endpoint {self.where} unreachable ({operation}): {exc}", transient=True
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError(
                f"no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or an instance role",
                transient=False,
            ) from None
        except CredentialRetrievalError as exc:
            # The instance metadata service or a credential process did not answer: often
            # momentary, and the operator sees the text meanwhile.
            raise StorageError(f"S3 credentials unavailable: {exc}", transient=True) from None
        except (NoRegionError, ParamValidationError) as exc:
            raise StorageError(f"S3 {operation} impossible: {exc}", transient=False) from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 {operation} failed: {exc}", transient=True) from None

    def _client_error(self, operation: str, exc: ClientError) -> StorageError:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = exc.response.get("Error", {}).get("Message") or code
        bucket = f"bucket '{self.bucket}'"
        # head_bucket answers a bare 404/403 without a body, so the status decides there.
        if code == "NoSuchBucket" or (operation == "check" and status == 404):
            return StorageError(f"{bucket} does not exist at {self.where}", transient=False)
        if code in _DENIED_CODES or status == 403:
            return StorageError(
                f"access to {bucket} at {self.where} denied ({code}): check the credentials "
                "and the bucket policy",
                transient=False,
            )
        transient = code in _TRANSIENT_CODES or status >= 500 or status == 429
        return StorageError(
            f"S3 {operation} in {bucket} failed: {code} {message}".rstrip(), transient=transient
        )

    def _get_client(self) -> Any:
        # Built once, lazily and in a worker thread: loading botocore's service model and
        # resolving credentials may read files or ask the instance metadata service.
        with self._client_lock:
            if self._client is None:
                addressing = "path" if self.endpoint_url else "auto"
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=BotoConfig(
                        signature_version="s3v4",
                        connect_timeout=CONNECT_TIMEOUT_SECONDS,
                        read_timeout=READ_TIMEOUT_SECONDS,
                        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                        s3={"addressing_style": addressing},
                    ),
                )
            return self._client


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")
