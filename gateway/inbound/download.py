"""Fetching an inbound fax's document from the carrier: http(s) only, bounded in size and time.

The API key goes along only to the carrier's own origin (scheme, host and port of
voxtelesys.base_url). A media link elsewhere, such as a presigned storage URL, must not learn
it, not even through a redirect, which is why redirects are followed here hop by hop rather
than by aiohttp.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

# Redirects followed for one download (presigned storage URLs often redirect once).
_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


class DownloadError(Exception):
    """The media could not be fetched; `transient` unless trying again cannot help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Media:
    data: bytes
    content_type: str | None


async def download(
    url: str,
    *,
    max_bytes: int,
    time_limit: float,
    carrier_base_url: str,
    api_key: str,
) -> Media:
    """Fetch `url` (http or https only) with a size and a total time limit.

    The API key goes along only to the carrier's own origin: a media link elsewhere (a
    presigned storage URL) must not learn it, including through a redirect, which is why
    redirects are followed here hop by hop rather than by aiohttp.
    """
    carrier_origin = _origin(carrier_base_url)
    deadline = time.monotonic() + time_limit
    async with aiohttp.ClientSession(trust_env=True) as session:
        for _hop in range(_MAX_REDIRECTS + 1):
            origin = _checked_origin(url)
            headers = {"Accept": "application/pdf, image/tiff, */*"}
            if origin == carrier_origin:
                headers["Authorization"] = f"Bearer {api_key}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DownloadError(f"download took longer than {time_limit:g}s")
            try:
                async with session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=remaining),
                ) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location")
                        if not location:
                            raise DownloadError(f"HTTP {response.status} without a Location")
                        try:
                            url = urljoin(url, location)
                        except ValueError as exc:
                            raise DownloadError(
                                f"the redirect's Location is not a usable URL: {exc}",
                                transient=False,
                            ) from None
                        continue
                    if response.status != 200:
                        raise DownloadError(
                            f"HTTP {response.status} {response.reason or ''}".strip()
                        )
                    if response.content_length is not None and response.content_length > max_bytes:
                        raise DownloadError(
                            f"media is {response.content_length} bytes, more than"
                            f" inbound.max_download_bytes ({max_bytes})",
                            transient=False,
                        )
                    data = await _read_limited(response, max_bytes)
                    content_type = response.headers.get("Content-Type")
            except TimeoutError:
                raise DownloadError(f"download took longer than {time_limit:g}s") from None
            except aiohttp.ClientError as exc:
                raise DownloadError(f"{type(exc).__name__}: {exc}") from None
            if not data:
                raise DownloadError("the media is empty")
            return Media(data, content_type)
    raise DownloadError(f"more than {_MAX_REDIRECTS} redirects")


async def _read_limited(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise DownloadError(
                f"media is larger than inbound.max_download_bytes ({max_bytes})", transient=False
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _checked_origin(url: str) -> tuple[str, str]:
    """The origin of a media URL, or a permanent DownloadError for one we will not fetch.

    The URL comes from outside (the carrier's record, a redirect), and urllib raises plain
    ValueError for some shapes ("http://[::1/x", a port past 65535): that must end this fax's
    download with a reason, not escape and stop the worker for every other fax too.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(
                f"refusing to fetch a non-http(s) URL ({parts.scheme}:)", transient=False
            )
        return _origin(url)
    except ValueError as exc:
        raise DownloadError(f"the media link is not a usable URL: {exc}", transient=False) from None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, f"{(parts.hostname or '').lower()}:{port}"
