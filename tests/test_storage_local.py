"""Local storage: documents under data.dir/media served at signed, expiring /media links."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from structlog.testing import capture_logs
from yarl import URL

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.storage import (
    DocumentMissing,
    LocalStorage,
    StorageError,
    create_storage,
    load_or_create_secret,
)
from gateway.storage.secret import SecretKeyError
from tests.conftest import free_port

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@dataclass
class Served:
    """A gateway HTTP app with the media route, running on a free port."""

    config: Config
    storage: LocalStorage
    base_url: str
    http: ClientSession

    async def get(self, url: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
        async with self.http.request(method, URL(url, encoded=True)) as response:
            return response.status, await response.read(), dict(response.headers)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def served(make_config: Callable[..., Config]) -> AsyncIterator[Served]:
    port = free_port()
    config = make_config({"http": {"public_url": f"http://127.0.0.1:{port}"}})
    app = web.Application()
    storage = create_storage(config, app)
    assert isinstance(storage, LocalStorage)
    runner = await _serve(app, port)
    async with ClientSession() as http:
        yield Served(config, storage, f"http://127.0.0.1:{port}", http)
    await runner.cleanup()


async def test_url_serves_exact_bytes_with_type_and_length(served: Served) -> None:
    """A stored document is served at its URL byte for byte, with its type and length."""
    stored = await served.storage.put("J0001", PDF, "application/pdf")
    assert stored.url.startswith(f"{served.base_url}/media/")
    assert stored.url.endswith(".pdf")
    status, body, headers = await served.get(stored.url)
    assert status == 200
    assert body == PDF
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Length"] == str(len(PDF))
    assert "no-store" in headers["Cache-Control"]

    status, body, headers = await served.get(stored.url, "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(PDF)))


@pytest.mark.parametrize(
    ("content_type", "suffix"),
    [("image/png", ".png"), ("image/tiff", ".tiff"), ("image/jpeg", ".jpg")],
)
async def test_each_fax_type_is_served_as_itself(
    served: Served, content_type: str, suffix: str
) -> None:
    """PNG, TIFF and JPEG documents keep their extension and are served with their type."""
    stored = await served.storage.put("J0002", PNG, content_type)
    assert stored.key.endswith(suffix)
    status, body, headers = await served.get(stored.url)
    assert (status, body, headers["Content-Type"]) == (200, PNG, content_type)


async def test_put_is_idempotent_per_job(served: Served) -> None:
    """A retried put for one job overwrites the same file instead of leaving an orphan."""
    first = await served.storage.put("J0003", b"first", "application/pdf")
    second = await served.storage.put("J0003", PDF, "application/pdf")
    assert first.key == second.key
    assert first.key.startswith("J0003-") and len(first.key) == len("J0003-") + 32 + len(".pdf")
    assert sorted(p.name for p in served.storage.directory.iterdir()) == [first.key]
    status, body, _ = await served.get(first.url)
    assert (status, body) == (200, PDF)
    other = await served.storage.put("J0004", PDF, "application/pdf")
    assert other.key != first.key


async def test_stored_file_is_durable_and_not_world_readable(served: Served) -> None:
    """The document file is complete on disk, readable by the gateway's group at most."""
    stored = await served.storage.put("J0005", PDF, "application/pdf")
    path = served.storage.directory / stored.key
    assert path.read_bytes() == PDF
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    assert [p.name for p in served.storage.directory.iterdir()] == [stored.key]


def _tampered(url: str) -> list[str]:
    base, token = url.rsplit("/", 1)
    expires, signature, name = token.split(".", 2)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return [
        f"{base}/{expires}.{flipped}.{name}",
        f"{base}/{int(expires) + 3600}.{signature}.{name}",
        f"{base}/{expires}.{signature}.{name.replace('.pdf', '.png')}",
        f"{base}/{expires}.{signature[:-2]}.{name}",
        f"{base}/{expires}..{name}",
        f"{base}/{name}",
    ]


async def test_tampered_tokens_get_a_bare_404(served: Served) -> None:
    """Any change to a token (signature, expiry, name) is refused with a 404 and no detail."""
    stored = await served.storage.put("J0006", PDF, "application/pdf")
    for url in _tampered(stored.url):
        status, body, _ = await served.get(url)
        assert status == 404, url
        assert body == b"404: Not Found", url


async def test_expired_link_is_refused(tmp_path: Path) -> None:
    """A link past its expiry is refused, while the same link was served just before."""
    clock = Clock(1_700_000_000.0)
    port = free_port()
    secret = os.urandom(32)
    storage = LocalStorage(
        tmp_path / "media",
        f"http://127.0.0.1:{port}",
        secret,
        60,
        clock=clock,
    )
    app = web.Application()
    storage.add_routes(app)
    runner = await _serve(app, port)
    try:
        stored = await storage.put("J0007", PDF, "application/pdf")
        assert stored.expires_at == clock.now + 60
        async with ClientSession() as http:
            clock.now += 59
            async with http.get(URL(stored.url, encoded=True)) as response:
                assert response.status == 200
            clock.now += 1
            async with http.get(URL(stored.url, encoded=True)) as response:
                assert response.status == 404
            # A fresh link for the same document works again.
            renewed = await storage.url_for(stored.key, "application/pdf")
            async with http.get(URL(renewed.url, encoded=True)) as response:
                assert response.status == 200
                assert await response.read() == PDF
    finally:
        await runner.cleanup()


async def test_a_flood_of_bad_links_is_one_log_line(served: Served) -> None:
    """60 requests for forged links log one line, so a prober cannot fill the log."""
    with capture_logs() as events:
        for n in range(60):
            status, _body, _ = await served.get(f"{served.base_url}/media/1.forged{n}.x.pdf")
            assert status == 404
    assert [e["event"] for e in events] == ["media.refused"]


async def test_unknown_and_path_trick_tokens_are_404(served: Served) -> None:
    """Signed tokens for missing files, garbage and '..' paths all answer 404."""
    storage = served.storage
    (served.config.data.dir / "outside.pdf").write_bytes(PDF)
    secret = DataDir(served.config.data.dir).secret.name
    far = storage.clock() + 600
    missing_name = "J0008-" + "0" * 32 + ".pdf"
    urls = [
        f"{served.base_url}/media/{storage.token_for(missing_name, far)}",
        f"{served.base_url}/media/{storage.token_for('../outside.pdf', far)}",
        f"{served.base_url}/media/{storage.token_for('..%2Foutside.pdf', far)}",
        f"{served.base_url}/media/../{secret}",
        f"{served.base_url}/media/..%2F{secret}",
        f"{served.base_url}/media/%2e%2e%2f{secret}",
        f"{served.base_url}/media/..%2Foutside.pdf",
        f"{served.base_url}/media/",
        f"{served.base_url}/media/x/y",
        f"{served.base_url}/media/not-a-token",
        f"{served.base_url}/media/{'9' * 40}.abc.J0008-{'0' * 32}.pdf",
    ]
    for url in urls:
        status, body, _ = await served.get(url)
        assert status == 404, url
        assert PDF not in body and b"secret" not in body.lower(), url


async def test_delete_removes_the_document_and_tolerates_missing(served: Served) -> None:
    """After delete the URL is 404, url_for reports it missing, and deleting again is fine."""
    stored = await served.storage.put("J0009", PDF, "application/pdf")
    await served.storage.delete(stored.key)
    assert not (served.storage.directory / stored.key).exists()
    status, _, _ = await served.get(stored.url)
    assert status == 404
    with pytest.raises(DocumentMissing) as missing:
        await served.storage.url_for(stored.key, "application/pdf")
    assert stored.key in str(missing.value) and not missing.value.transient
    await served.storage.delete(stored.key)


async def test_keys_that_are_not_document_names_are_refused(served: Served) -> None:
    """delete and url_for never touch a path outside the media directory."""
    (served.config.data.dir / "keep.pdf").write_bytes(PDF)
    for key in ("../keep.pdf", "/etc/passwd", "", "J1-" + "0" * 32 + "/x"):
        with pytest.raises(StorageError) as refused:
            await served.storage.delete(key)
        assert not refused.value.transient
        with pytest.raises(StorageError):
            await served.storage.url_for(key, "application/pdf")
    assert (served.config.data.dir / "keep.pdf").exists()


async def test_secret_and_links_survive_a_restart(served: Served) -> None:
    """A new storage over the same data dir reuses the secret: old links and keys stay valid."""
    stored = await served.storage.put("J0010", PDF, "application/pdf")
    secret_path = DataDir(served.config.data.dir).secret
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert len(secret_path.read_bytes()) == 32

    again = create_storage(served.config, None)
    assert isinstance(again, LocalStorage)
    assert load_or_create_secret(served.config.data.dir) == secret_path.read_bytes()
    assert again.name_from_token(stored.url.rsplit("/", 1)[1]) == stored.key
    repeated = await again.put("J0010", PDF, "application/pdf")
    assert repeated.key == stored.key


def test_secret_is_created_once_and_differs_per_data_dir(tmp_path: Path) -> None:
    """Each data dir gets its own random secret; loading it again returns the same bytes."""
    first = load_or_create_secret(tmp_path / "a")
    assert load_or_create_secret(tmp_path / "a") == first
    assert load_or_create_secret(tmp_path / "b") != first
    assert [p.name for p in (tmp_path / "a").iterdir()] == [DataDir(tmp_path / "a").secret.name]


def test_a_damaged_secret_file_is_reported_not_replaced(tmp_path: Path) -> None:
    """A secret file of the wrong size is an error naming the file, and it is left alone."""
    secret = DataDir(tmp_path).secret
    secret.write_bytes(b"short")
    with pytest.raises(SecretKeyError, match=secret.name):
        load_or_create_secret(tmp_path)
    assert secret.read_bytes() == b"short"


async def test_check_passes_on_a_writable_directory_and_explains_otherwise(
    make_config: Callable[..., Config],
) -> None:
    """check() creates the media dir; when a file is in its way it says which path is wrong."""
    config = make_config()
    storage = create_storage(config, None)
    await storage.check()
    assert (config.data.dir / "media").is_dir()
    assert list((config.data.dir / "media").iterdir()) == []

    (config.data.dir / "media").rmdir()
    (config.data.dir / "media").write_bytes(b"in the way")
    with pytest.raises(StorageError) as failed:
        await storage.check()
    assert str(config.data.dir / "media") in str(failed.value)
    assert "not writable" in str(failed.value)
    assert not failed.value.transient
    with pytest.raises(StorageError):
        await storage.put("J0011", PDF, "application/pdf")


async def test_no_secret_reaches_the_logs(served: Served) -> None:
    """Neither the HMAC secret nor a link's signature appears in any log event."""
    secret = DataDir(served.config.data.dir).secret.read_bytes()
    with capture_logs() as events:
        stored = await served.storage.put("J0012", PDF, "application/pdf")
        await served.get(stored.url)
        for url in _tampered(stored.url):
            await served.get(url)
        renewed = await served.storage.url_for(stored.key, "application/pdf")
        await served.storage.delete(stored.key)
    assert events, "storage logs what it does"
    text = repr(events)
    signatures = [u.rsplit("/", 1)[1].split(".")[1] for u in (stored.url, renewed.url)]
    forbidden = [
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret),
        *signatures,
    ]
    for value in forbidden:
        assert value not in text
    # A URL logged by another stage loses its token to the redactor.
    assert signatures[0] not in log.redact(f"job.uploaded url={stored.url}")
