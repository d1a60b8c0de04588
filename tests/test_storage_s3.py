"""S3 storage against a real SeaweedFS server with authentication: presigned URLs, errors."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from structlog.testing import capture_logs
from yarl import URL

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.storage import (
    DocumentMissing,
    S3Storage,
    StorageError,
    StoredDocument,
    create_storage,
)
from tests.conftest import free_port
from tests.servers.seaweed import S3Server, _Weed

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 16


@pytest.fixture
def s3_config(s3_env: S3Server, make_config: Callable[..., Config]) -> Config:
    return make_config(s3_env.config_overrides())


@pytest.fixture
async def storage(s3_config: Config) -> AsyncIterator[S3Storage]:
    built = create_storage(s3_config, None)
    assert isinstance(built, S3Storage)
    yield built
    await built.close()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def fetch(http: ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    # encoded=True: the URL is fetched exactly as signed, as the carrier would.
    async with http.get(URL(url, encoded=True)) as response:
        return response.status, await response.read(), dict(response.headers)


async def _storage_for(config: Config, **storage: Any) -> S3Storage:
    changed = config.model_copy(
        update={"storage": config.storage.model_copy(update=storage)}, deep=True
    )
    built = create_storage(changed, None)
    assert isinstance(built, S3Storage)
    return built


async def test_presigned_url_serves_the_document(
    storage: S3Storage, s3_env: S3Server, http: ClientSession
) -> None:
    """put stores the bytes with their type; a plain GET of the presigned URL returns them."""
    before = time.time()
    stored = await storage.put("J0001", PDF, "application/pdf")
    assert stored.key.startswith("faxes/J0001-") and stored.key.endswith(".pdf")
    assert stored.url.startswith(f"{s3_env.endpoint_url}/{s3_env.bucket}/{stored.key}?")
    assert "X-Amz-Signature=" in stored.url and "X-Amz-Expires=86400" in stored.url
    assert int(before) + 86400 <= stored.expires_at <= time.time() + 86400

    status, body, headers = await fetch(http, stored.url)
    assert status == 200
    assert body == PDF
    assert headers["Content-Type"] == "application/pdf"

    client = s3_env.client()
    try:
        head = client.head_object(Bucket=s3_env.bucket, Key=stored.key)
    finally:
        client.close()
    assert head["ContentType"] == "application/pdf"
    assert head["ContentLength"] == len(PDF)
    assert head["ContentDisposition"] == f'inline; filename="{stored.key.split("/")[-1]}"'


async def test_image_documents_keep_their_type(storage: S3Storage, http: ClientSession) -> None:
    """A JPEG is stored with a .jpg key and served as image/jpeg."""
    stored = await storage.put("J0002", JPEG, "image/jpeg")
    assert stored.key.endswith(".jpg")
    status, body, headers = await fetch(http, stored.url)
    assert (status, body, headers["Content-Type"]) == (200, JPEG, "image/jpeg")


async def test_url_without_or_with_a_tampered_signature_is_refused(
    storage: S3Storage, s3_env: S3Server, http: ClientSession
) -> None:
    """The object is private: no signature, a forged one or a changed expiry gets 403."""
    stored = await storage.put("J0003", PDF, "application/pdf")
    bare = stored.url.split("?", 1)[0]
    signature = stored.url.rsplit("X-Amz-Signature=", 1)[1]
    forged = "0" * len(signature) if signature[0] != "0" else "1" * len(signature)
    for url in (
        bare,
        stored.url.replace(signature, forged),
        stored.url.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401"),
        f"{s3_env.endpoint_url}/{s3_env.bucket}/",
    ):
        status, body, _ = await fetch(http, url)
        assert status == 403, url
        assert PDF not in body


async def test_put_twice_for_one_job_overwrites_one_key(
    storage: S3Storage, s3_env: S3Server, http: ClientSession
) -> None:
    """A retried put after a crash lands on the same key; no orphan object is left."""
    first = await storage.put("J0004", b"%PDF-1.4 first attempt", "application/pdf")
    second = await storage.put("J0004", PDF, "application/pdf")
    assert first.key == second.key
    status, body, _ = await fetch(http, first.url)
    assert (status, body) == (200, PDF)
    client = s3_env.client()
    try:
        listing = client.list_objects_v2(Bucket=s3_env.bucket)
    finally:
        client.close()
    assert [o["Key"] for o in listing["Contents"]] == [first.key]


async def test_keys_depend_on_the_gateway_secret(s3_config: Config, storage: S3Storage) -> None:
    """Another gateway secret gives another key for the same job id: keys cannot be guessed."""
    ours = await storage.put("J0005", PDF, "application/pdf")
    DataDir(s3_config.data.dir).secret.unlink()
    other = await _storage_for(s3_config)
    try:
        theirs = await other.put("J0005", PDF, "application/pdf")
    finally:
        await other.close()
    assert ours.key.split("-")[0] == theirs.key.split("-")[0] == "faxes/J0005"
    assert ours.key != theirs.key


async def test_url_for_renews_the_link_of_an_existing_object(
    storage: S3Storage, http: ClientSession
) -> None:
    """url_for signs a new working URL for a stored document."""
    stored = await storage.put("J0006", PDF, "application/pdf")
    renewed = await storage.url_for(stored.key, "application/pdf")
    assert isinstance(renewed, StoredDocument)
    assert renewed.key == stored.key
    status, body, _ = await fetch(http, renewed.url)
    assert (status, body) == (200, PDF)


async def test_delete_makes_the_url_404_and_missing_is_fine(
    storage: S3Storage, http: ClientSession
) -> None:
    """After delete the presigned URL is 404, url_for reports it missing, deleting again works."""
    stored = await storage.put("J0007", PDF, "application/pdf")
    await storage.delete(stored.key)
    status, _, _ = await fetch(http, stored.url)
    assert status == 404
    with pytest.raises(DocumentMissing) as missing:
        await storage.url_for(stored.key, "application/pdf")
    assert stored.key in str(missing.value) and not missing.value.transient
    await storage.delete(stored.key)
    await storage.delete("faxes/J0099-" + "0" * 32 + ".pdf")


async def test_keys_outside_the_prefix_are_refused(storage: S3Storage) -> None:
    """delete and url_for only act on document keys under the configured prefix."""
    for key in ("other/J1-" + "0" * 32 + ".pdf", "faxes/../x", "faxes/"):
        with pytest.raises(StorageError, match="not a document key"):
            await storage.delete(key)
        with pytest.raises(StorageError, match="not a document key"):
            await storage.url_for(key, "application/pdf")


async def test_check_passes_on_a_reachable_bucket(storage: S3Storage) -> None:
    """check() returns quietly when the bucket exists and the credentials work."""
    await storage.check()


async def test_missing_bucket_is_a_clear_permanent_error(s3_config: Config) -> None:
    """check() and put on a bucket that does not exist name the bucket; not transient."""
    storage = await _storage_for(s3_config, bucket="no-such-bucket-here")
    try:
        with pytest.raises(StorageError) as failed:
            await storage.check()
        assert "bucket 'no-such-bucket-here' does not exist" in str(failed.value)
        assert not failed.value.transient
        with pytest.raises(StorageError) as put_failed:
            await storage.put("J0008", PDF, "application/pdf")
        assert "no-such-bucket-here" in str(put_failed.value)
        assert not put_failed.value.transient
    finally:
        await storage.close()


async def test_closed_port_is_a_transient_unreachable_error(s3_config: Config) -> None:
    """An endpoint nobody listens on is reported as unreachable and transient, quickly."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = await _storage_for(s3_config, endpoint_url=endpoint)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as failed:
            await storage.check()
        assert f"S3 endpoint {endpoint} unreachable" in str(failed.value)
        assert failed.value.transient
        with pytest.raises(StorageError) as put_failed:
            await storage.put("J0009", PDF, "application/pdf")
        assert put_failed.value.transient
        assert time.monotonic() - started < 15
    finally:
        await storage.close()


async def test_wrong_credentials_are_access_denied(
    s3_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong secret key is reported as denied access to the bucket, not as transient."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-at-all")
    storage = await _storage_for(s3_config)
    try:
        with pytest.raises(StorageError) as failed:
            await storage.check()
        assert f"access to bucket '{s3_config.storage.bucket}'" in str(failed.value)
        assert "denied" in str(failed.value)
        assert not failed.value.transient
        assert "not-the-secret-key-at-all" not in str(failed.value)
    finally:
        await storage.close()


async def test_missing_credentials_say_where_they_are_looked_for(
    s3_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any credentials the error explains the standard places to put them."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = await _storage_for(s3_config)
    try:
        with pytest.raises(StorageError) as failed:
            await storage.put("J0010", PDF, "application/pdf")
        assert "no usable S3 credentials" in str(failed.value)
        assert "AWS_ACCESS_KEY_ID" in str(failed.value)
        assert not failed.value.transient
    finally:
        await storage.close()


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    """The fixture fails fast, with weed's exit status and the tail of its log."""
    weed = _Weed(tmp_path)
    weed.args.append("-no-such-flag")
    with pytest.raises(RuntimeError) as failed:
        weed.start()
    assert "weed exited with status" in str(failed.value)
    assert str(weed.log_path) in str(failed.value)
    assert "mini" in str(failed.value)  # from the usage text weed printed
    assert weed.process is not None and weed.process.returncode is not None


async def test_boto3_runs_off_the_event_loop(s3_config: Config) -> None:
    """While a put (client creation and upload) runs, another task on the loop keeps ticking."""
    storage = await _storage_for(s3_config)
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        started = time.monotonic()
        await storage.put("J0011", PDF * 100_000, "application/pdf")
        elapsed = time.monotonic() - started
    finally:
        done.set()
        await task
        await storage.close()
    during = [t for t in ticks if t >= started]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    # A put on the loop would let the ticker run at most once before it returned.
    assert len(during) >= 5, (len(during), elapsed)
    assert max(gaps) < max(0.5, elapsed / 2), (max(gaps), elapsed)


async def test_no_secret_reaches_the_logs(
    storage: S3Storage, s3_env: S3Server, s3_config: Config
) -> None:
    """Neither the AWS secret key, the HMAC secret nor a URL signature appears in log events."""
    hmac_secret = DataDir(s3_config.data.dir).secret.read_bytes()
    with capture_logs() as events:
        stored = await storage.put("J0012", PDF, "application/pdf")
        renewed = await storage.url_for(stored.key, "application/pdf")
        await storage.check()
        await storage.delete(stored.key)
    assert events, "storage logs what it does"
    text = repr(events)
    for value in (
        s3_env.secret_key,
        hmac_secret.hex(),
        repr(hmac_secret),
        stored.url.rsplit("X-Amz-Signature=", 1)[1],
        renewed.url.rsplit("X-Amz-Signature=", 1)[1],
    ):
        assert value not in text
