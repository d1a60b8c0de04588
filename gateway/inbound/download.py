"""Fetching an inbound fax's document: http(s), public addresses only, bounded in size and time.

The media link comes from outside: the carrier's record, a webhook (with webhooks.verify off,
from anyone who has the token), a redirect. So every hop is checked before anything is sent:

- The host is resolved here and each address classified (`address_refusal`); loopback,
  private, link-local, multicast, unspecified and reserved addresses are refused, IPv4 inside
  IPv6 included. The connection then goes to the addresses that were checked (a resolver
  that only answers those), never to a second lookup's answer (DNS rebinding).
- Exempt: the carrier's own origin (scheme, host and port of voxtelesys.base_url, which may
  be the demo's loopback sandbox), and everything when inbound.allow_private_media is on.
- At most _MAX_REDIRECTS redirects, followed here hop by hop, each checked like the link.
- The API key goes only with the URL the carrier named, and only to its own origin; no
  redirect (not even one to the carrier's API) gets it.
- What comes back must be a PDF or TIFF by its bytes; a web page or metrics are not a fax.

Refusals are permanent (`transient=False`): asking again gets the same link.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL  # aiohttp's own URL type: the host it connects to, spelt as it spells it

from gateway.document import kinds

# Redirects followed for one download (presigned storage URLs often redirect once).
_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
_FAX_TYPES = (kinds.PDF, kinds.TIFF)
_REDIRECTS = (301, 302, 303, 307, 308)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Well-known NAT64 prefix: the last 32 bits are an IPv4 address the translator reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DownloadError(Exception):
    """The media could not be fetched; `transient` unless trying again cannot help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Media:
    data: bytes
    # What the bytes are (kinds.PDF or kinds.TIFF), whatever the server declared.
    content_type: str


async def download(
    url: str,
    *,
    max_bytes: int,
    time_limit: float,
    carrier_base_url: str,
    api_key: str,
    allow_private_media: bool = False,
    resolver: AbstractResolver | None = None,
) -> Media:
    """Fetch `url` (http or https only) with a size and a total time limit.

    `resolver` answers host names (tests inject one; the default is aiohttp's). See the
    module docstring for which hosts are fetched from and who gets the API key.
    """
    carrier_origin = _origin(carrier_base_url)
    deadline = time.monotonic() + time_limit
    own_resolver = resolver is None
    names = resolver if resolver is not None else DefaultResolver()
    try:
        for hop in range(_MAX_REDIRECTS + 1):
            origin, target = _checked(url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DownloadError(f"download took longer than {time_limit:g}s")
            headers = {"Accept": "application/pdf, image/tiff"}
            # Only the link the carrier gave, at its own origin: a redirect is someone
            # else's say-so, even when it points at the carrier's API.
            if hop == 0 and origin == carrier_origin:
                headers["Authorization"] = f"Bearer {api_key}"
            if allow_private_media or origin == carrier_origin:
                # Operators behind an HTTPS proxy reach the carrier through it (trust_env),
                # as the carrier client does.
                session = aiohttp.ClientSession(
                    trust_env=True,
                    connector=aiohttp.TCPConnector(resolver=names) if not own_resolver else None,
                )
            else:
                try:
                    async with asyncio.timeout(remaining):
                        checked = await _public_addresses(target, names, redirected=hop > 0)
                except TimeoutError:
                    raise DownloadError(f"download took longer than {time_limit:g}s") from None
                # Decided: no proxy here (trust_env off), whatever HTTPS_PROXY says. A proxy
                # would look the name up again and connect where it likes, so the addresses
                # checked above would mean nothing. Media links at the carrier's own origin
                # (the usual case) go through the proxy like the carrier client; an operator
                # whose only way out is a proxy that refuses private destinations itself may
                # set inbound.allow_private_media (README, "Inbound media and proxies").
                session = aiohttp.ClientSession(
                    trust_env=False,
                    connector=aiohttp.TCPConnector(
                        resolver=_Checked(checked), use_dns_cache=False, force_close=True
                    ),
                )
            async with session:
                location = await _get(
                    session, url, headers, remaining, max_bytes, time_limit=time_limit
                )
            if isinstance(location, Media):
                return location
            try:
                url = urljoin(url, location)
            except ValueError as exc:
                raise DownloadError(
                    f"the redirect's Location is not a usable URL: {exc}", transient=False
                ) from None
    finally:
        if own_resolver:
            await names.close()
    raise DownloadError(f"more than {_MAX_REDIRECTS} redirects", transient=False)


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    remaining: float,
    max_bytes: int,
    *,
    time_limit: float,
) -> Media | str:
    """One request: the media, or the Location of a redirect."""
    try:
        async with session.get(
            url,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=remaining),
        ) as response:
            if response.status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise DownloadError(f"HTTP {response.status} without a Location")
                return location
            if response.status != 200:
                raise DownloadError(f"HTTP {response.status} {response.reason or ''}".strip())
            if response.content_length is not None and response.content_length > max_bytes:
                raise DownloadError(
                    f"media is {response.content_length} bytes, more than"
                    f" inbound.max_download_bytes ({max_bytes})",
                    transient=False,
                )
            data = await _read_limited(response, max_bytes)
            declared = response.headers.get("Content-Type")
    except TimeoutError:
        raise DownloadError(f"download took longer than {time_limit:g}s") from None
    except aiohttp.ClientError as exc:
        raise DownloadError(f"{type(exc).__name__}: {exc}") from None
    if not data:
        raise DownloadError("the media is empty")
    content_type = kinds.sniff(data)
    if content_type not in _FAX_TYPES:
        what = kinds.TYPE_NAMES[content_type] if content_type else "unrecognised bytes"
        raise DownloadError(
            f"the media is not a PDF or TIFF (it is {what}, declared"
            f" {(declared or 'without a type')[:80]!r}); a fax document is one or the other",
            transient=False,
        )
    return Media(data, content_type)


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


# -- which addresses ------------------------------------------------------------------------


def address_refusal(address: IPAddress) -> str | None:
    """Why the gateway will not fetch from `address` ("a loopback address"...), or None.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, 6to4, NAT64) are judged by
    the IPv4 address they lead to.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            # The IPv6 wrapper itself is "reserved" (::ffff:0:0/96) to the ipaddress module;
            # what is reached is the IPv4 address.
            inner = address_refusal(embedded)
            return f"{inner} (as {embedded})" if inner else None
    # Most specific first: 127.0.0.1 is also "private" to the ipaddress module.
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    # fec0::/10: deprecated (RFC 3879) but still a site's own network where one uses it; the
    # ipaddress module counts it neither private nor reserved, and global.
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


async def _public_addresses(
    target: URL, names: AbstractResolver, *, redirected: bool
) -> list[ResolveResult]:
    """The addresses of `target`'s host that may be fetched from; a DownloadError if none."""
    host = target.raw_host or ""
    port = target.port or 0
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        # aiohttp connects to a literal without asking the resolver: checked here alone.
        found = [_result(host, str(literal), port)]
    else:
        try:
            found = await names.resolve(host, port, family=socket.AF_UNSPEC)
        except OSError as exc:
            raise DownloadError(f"cannot resolve {host}: {exc}") from None
    allowed: list[ResolveResult] = []
    refused: list[str] = []
    for result in found:
        try:
            address = ipaddress.ip_address(result["host"])
        except ValueError:
            refused.append(f"{result['host']} (not an IP address)")
            continue
        reason = address_refusal(address)
        if reason is None:
            allowed.append(result)
        else:
            refused.append(f"{address} ({reason})")
    if allowed:
        # A name with public and inward answers is fetched from its public ones only.
        return allowed
    where = "the redirect to " if redirected else ""
    if literal is not None:
        why = refused[0].replace(" (", " is ", 1).removesuffix(")")
    else:
        why = f"{host} resolves only to {', '.join(refused) or 'nothing'}"
    shown = f"[{host}]" if ":" in host else host
    raise DownloadError(
        f"refusing media from {where}{shown}:{port}: {why};"
        " only the carrier's own origin (voxtelesys.base_url) may be private, unless"
        " inbound.allow_private_media is on",
        transient=False,
    )


def _result(host: str, address: str, port: int) -> ResolveResult:
    return ResolveResult(
        hostname=host,
        host=address,
        port=port,
        family=socket.AF_INET6 if ":" in address else socket.AF_INET,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


class _Checked(AbstractResolver):
    """The connector's resolver for one checked hop: it answers with the checked addresses
    and nothing else, so the connection cannot go where a second lookup would send it."""

    def __init__(self, checked: list[ResolveResult]) -> None:
        self._checked = checked
        self._host = checked[0]["hostname"].rstrip(".")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.rstrip(".") != self._host:
            # Cannot happen with redirects and proxies off; refuse rather than look it up.
            raise OSError(f"{host} was not checked")
        return list(self._checked)

    async def close(self) -> None:
        pass


# -- URLs -----------------------------------------------------------------------------------


def _checked(url: str) -> tuple[tuple[str, str], URL]:
    """The origin of a media URL and its parsed form, or a permanent DownloadError.

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
        origin = _origin(url)
        target = URL(url)
    except ValueError as exc:
        raise DownloadError(f"the media link is not a usable URL: {exc}", transient=False) from None
    if not target.raw_host:
        raise DownloadError("the media link has no host", transient=False)
    return origin, target


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, f"{(parts.hostname or '').lower()}:{port}"
