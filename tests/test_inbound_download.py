"""Inbound media links: which hosts the gateway fetches from, who gets the API key, what it keeps.

Every server here is a real aiohttp server on a loopback address and port 0. Loopback stands
in for "an address the gateway must not reach" (the gateway's own /metrics, another local
service); the private and reserved ranges are checked on the classifier itself, so no test
sends a packet off this host. Host names are answered by a resolver the test injects.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.config import Address
from gateway.inbound import download as download_module
from gateway.inbound.download import DownloadError, address_refusal, download
from gateway.ops.httpd import HttpServer
from tests import samples

API_KEY = "test-api-key-abcdef"


@dataclass
class Site:
    """One recording media server: what it serves and every request it saw."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def auth_seen(self) -> list[str | None]:
        return [auth for _path, auth in self.seen]


async def _serve(host: str) -> tuple[HttpServer, Site]:
    site_holder: list[Site] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        site = site_holder[0]
        site.seen.append((request.path_qs, request.headers.get("Authorization")))
        name = request.match_info["name"]
        if name == "redirect":
            raise web.HTTPFound(request.query["to"])
        if name.startswith("chain-"):
            # chain-N answers with N redirects in all before the document.
            left = int(name.removeprefix("chain-"))
            raise web.HTTPFound(f"/media/chain-{left - 1}" if left > 1 else "/media/fax.pdf")
        data = site.files.get(name)
        if data is None:
            raise web.HTTPNotFound()
        # The declared type lies on purpose: the bytes decide.
        return web.Response(body=data, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/media/{name}", handle)
    server = HttpServer(app, Address(host, 0))
    await server.start()
    shown = f"[{host}]" if ":" in host else host
    site = Site(url=f"http://{shown}:{server.port}")
    site.files["fax.pdf"] = samples.pdf(1)
    site_holder.append(site)
    return server, site


@dataclass
class Sites:
    carrier: Site  # the origin of voxtelesys.base_url
    other: Site  # another local service: loopback, not the carrier's

    @property
    def base_url(self) -> str:
        return f"{self.carrier.url}/api/v1"


@pytest.fixture
async def sites() -> AsyncIterator[Sites]:
    carrier_server, carrier = await _serve("127.0.0.1")
    other_server, other = await _serve("127.0.0.1")
    yield Sites(carrier, other)
    await carrier_server.stop()
    await other_server.stop()


class Names(AbstractResolver):
    """A resolver with a fixed table, counting its lookups; unknown names fail as DNS does."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=answer,
                port=port,
                family=socket.AF_INET6 if ":" in answer else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for answer in answers
        ]

    async def close(self) -> None:
        pass


async def _get(url: str, sites: Sites, **options: object) -> download_module.Media:
    return await download(
        url,
        max_bytes=10**6,
        time_limit=5,
        carrier_base_url=sites.base_url,
        api_key=API_KEY,
        **options,  # type: ignore[arg-type]
    )


async def _refused(url: str, sites: Sites, **options: object) -> DownloadError:
    with pytest.raises(DownloadError) as caught:
        await _get(url, sites, **options)
    error = caught.value
    assert error.transient is False
    assert API_KEY not in str(error)
    return error


# -- where media may come from -------------------------------------------------------------------


async def test_a_loopback_link_is_refused_by_default(sites: Sites) -> None:
    """A link to a loopback service that is not the carrier is refused, never requested."""
    error = await _refused(f"{sites.other.url}/media/fax.pdf", sites)
    assert "127.0.0.1" in str(error) and "loopback" in str(error)
    assert "inbound.allow_private_media" in str(error)
    assert sites.other.seen == []


async def test_a_name_that_resolves_to_loopback_is_refused(sites: Sites) -> None:
    """A host name is resolved and its addresses checked: one that points inward is refused."""
    names = Names({"media.internal.test": ["127.0.0.1"]})
    url = f"http://media.internal.test:{sites.other.port}/media/fax.pdf"
    error = await _refused(url, sites, resolver=names)
    assert "media.internal.test" in str(error) and "loopback" in str(error)
    assert names.lookups == ["media.internal.test"]
    assert sites.other.seen == []


async def test_ipv6_loopback_is_refused() -> None:
    """[::1] is loopback too, and a server listening there sees no request."""
    server, site = await _serve("::1")
    try:
        with pytest.raises(DownloadError) as caught:
            await download(
                f"{site.url}/media/fax.pdf",
                max_bytes=10**6,
                time_limit=5,
                carrier_base_url="https://api.carrier.example/api/v1",
                api_key=API_KEY,
            )
        assert caught.value.transient is False
        assert "::1" in str(caught.value) and "loopback" in str(caught.value)
        assert site.seen == []
        # The server is there: allowed, the same link is fetched.
        got = await download(
            f"{site.url}/media/fax.pdf",
            max_bytes=10**6,
            time_limit=5,
            carrier_base_url="https://api.carrier.example/api/v1",
            api_key=API_KEY,
            allow_private_media=True,
        )
        assert got.data == site.files["fax.pdf"]
    finally:
        await server.stop()


async def test_ipv4_mapped_loopback_is_refused(sites: Sites) -> None:
    """::ffff:127.0.0.1 is the IPv4 loopback written as IPv6: refused as loopback."""
    names = Names({"mapped.test": ["::ffff:127.0.0.1"]})
    url = f"http://mapped.test:{sites.other.port}/media/fax.pdf"
    error = await _refused(url, sites, resolver=names)
    assert "loopback" in str(error)


async def test_private_media_is_fetched_when_allowed(sites: Sites) -> None:
    """inbound.allow_private_media lets a local link through, without the API key."""
    names = Names({"media.internal.test": ["127.0.0.1"]})
    url = f"http://media.internal.test:{sites.other.port}/media/fax.pdf"
    got = await _get(url, sites, allow_private_media=True, resolver=names)
    assert got.data == sites.other.files["fax.pdf"]
    assert got.content_type == "application/pdf"
    assert sites.other.auth_seen() == [None]


async def test_the_carriers_own_origin_is_fetched_with_the_key(sites: Sites) -> None:
    """voxtelesys.base_url's origin is trusted even on loopback (the sandbox) and gets the key."""
    got = await _get(f"{sites.carrier.url}/media/fax.pdf", sites)
    assert got.data == sites.carrier.files["fax.pdf"]
    assert sites.carrier.auth_seen() == [f"Bearer {API_KEY}"]


async def test_the_carriers_host_on_another_port_is_not_its_origin(sites: Sites) -> None:
    """Same host, other port: a different origin, so refused like any loopback service."""
    await _refused(f"http://127.0.0.1:{sites.other.port}/media/fax.pdf", sites)
    assert sites.other.seen == []


async def test_the_checked_address_is_the_one_connected_to(
    sites: Sites, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One lookup per hop, and the connection goes to the address it answered: a name that
    answers differently the second time (DNS rebinding) cannot move the connection."""
    vetted = ipaddress.ip_address("127.0.0.1")
    # Stand-in for "a public address" without leaving loopback: 127.0.0.1 passes the check
    # here, every other address (the rebinding answer 127.0.0.2) is refused as usual.
    real = download_module.address_refusal
    monkeypatch.setattr(
        download_module,
        "address_refusal",
        lambda address: None if address == vetted else real(address),
    )

    class Rebinding(Names):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            answers = await super().resolve(host, port, family)
            self.table[host] = ["127.0.0.2"]  # what a second lookup would get
            return answers

    names = Rebinding({"rebind.test": ["127.0.0.1"]})
    got = await _get(f"http://rebind.test:{sites.other.port}/media/fax.pdf", sites, resolver=names)
    assert got.data == sites.other.files["fax.pdf"]
    assert names.lookups == ["rebind.test"]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("::ffff:192.168.1.1", "private"),
        ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),  # deprecated (RFC 3879), still a site's own network
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation range, private to Python
    ],
)
def test_addresses_the_gateway_will_not_fetch_from(address: str, kind: str) -> None:
    """Each non-public range is refused with its name, IPv4, IPv6 and IPv4 inside IPv6."""
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and kind in refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_fetched_from(address: str) -> None:
    """A public address, also as IPv4-mapped IPv6, passes the check."""
    assert address_refusal(ipaddress.ip_address(address)) is None


# -- redirects -----------------------------------------------------------------------------------


async def test_a_redirect_to_a_loopback_address_is_refused(sites: Sites) -> None:
    """The carrier's link may redirect, but not inward: the target is checked like the link."""
    url = f"{sites.carrier.url}/media/redirect?to={sites.other.url}/media/fax.pdf"
    error = await _refused(url, sites)
    assert "redirect" in str(error) and "loopback" in str(error)
    assert sites.other.seen == []


async def test_a_redirect_to_a_name_pointing_inward_is_refused(sites: Sites) -> None:
    """A redirect's host name is resolved and checked before anything is sent to it."""
    names = Names({"storage.internal.test": ["127.0.0.1"]})
    target = f"http://storage.internal.test:{sites.other.port}/media/fax.pdf"
    error = await _refused(f"{sites.carrier.url}/media/redirect?to={target}", sites, resolver=names)
    assert "storage.internal.test" in str(error)
    assert sites.other.seen == []


async def test_a_redirect_to_ipv6_loopback_is_refused(sites: Sites) -> None:
    """A redirect to [::1] is refused as loopback."""
    url = f"{sites.carrier.url}/media/redirect?to=http://[::1]:{sites.other.port}/media/fax.pdf"
    error = await _refused(url, sites)
    assert "::1" in str(error) and "loopback" in str(error)


async def test_three_redirects_are_followed(sites: Sites) -> None:
    """Up to three redirects lead to the document."""
    got = await _get(f"{sites.carrier.url}/media/chain-3", sites)
    assert got.data == sites.carrier.files["fax.pdf"]
    assert len(sites.carrier.seen) == 4


async def test_a_fourth_redirect_is_refused(sites: Sites) -> None:
    """More than three redirects end the download, permanently, without a fifth request."""
    error = await _refused(f"{sites.carrier.url}/media/chain-4", sites)
    assert "more than 3 redirects" in str(error)
    assert len(sites.carrier.seen) == 4


# -- the API key ---------------------------------------------------------------------------------


async def test_a_redirect_back_to_the_carrier_carries_no_key(sites: Sites) -> None:
    """A link elsewhere that redirects to the carrier's API does not get the key sent there."""
    url = f"{sites.other.url}/media/redirect?to={sites.carrier.url}/media/fax.pdf"
    got = await _get(url, sites, allow_private_media=True)
    assert got.data == sites.carrier.files["fax.pdf"]
    assert sites.other.auth_seen() == [None]
    assert sites.carrier.auth_seen() == [None]


async def test_a_redirect_within_the_carrier_drops_the_key(sites: Sites) -> None:
    """Only the URL the carrier named gets the key: its own redirect, even to itself, does not."""
    url = f"{sites.carrier.url}/media/redirect?to=/media/fax.pdf"
    await _get(url, sites)
    assert sites.carrier.auth_seen() == [f"Bearer {API_KEY}", None]


# -- what the media is ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"<html><body>gateway_up 1</body></html>", "unrecognised"),
        (b"# HELP fax_gateway_up\n", "unrecognised"),
        (samples.png(20, 20), "PNG"),
    ],
)
async def test_media_that_is_not_pdf_or_tiff_is_refused(
    sites: Sites, data: bytes, shown: str
) -> None:
    """Bytes that are not a PDF or TIFF (a web page, metrics, an image) are not a fax."""
    sites.carrier.files["page"] = data
    error = await _refused(f"{sites.carrier.url}/media/page", sites)
    assert "not a PDF or TIFF" in str(error) and shown in str(error)


async def test_a_tiff_is_known_by_its_bytes(sites: Sites) -> None:
    """A TIFF served as application/pdf comes back as image/tiff."""
    sites.carrier.files["fax.tif"] = samples.tiff(1)
    got = await _get(f"{sites.carrier.url}/media/fax.tif", sites)
    assert got.content_type == "image/tiff"
