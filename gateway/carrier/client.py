"""The Voxtelesys Fax API client: send a fax, read one, list them all, check the key.

One aiohttp ClientSession serves every request (connection reuse, one place for timeouts).
Every answer becomes either a typed `CarrierFax` or a typed `CarrierError`; transient errors (5xx,
timeouts, network) are retried here with jittered backoff within `retry`, everything else is
raised at once. Longer outages are the durable queue's business: its stages retry on their own
schedule, so the in-call policy is deliberately short.

The API key travels only in the Authorization header; it is never put in a message or a log
line (the log redactor would hide it, but it should not get there in the first place).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from gateway import __version__
from gateway.carrier.errors import (
    AuthError,
    BadResponse,
    CarrierError,
    CarrierUnavailable,
    error_for_status,
    is_transient,
)
from gateway.carrier.models import CarrierFax, PayloadError
from gateway.config import VoxtelesysConfig
from gateway.log import get_logger
from gateway.queue.backoff import RetryPolicy, retrying

log = get_logger(__name__)

# A handful of quick retries inside one call; the queue stages retry for days beyond that.
DEFAULT_RETRY = RetryPolicy(attempts=3, min_delay=0.5, max_delay=5.0, deadline=30.0)

# How far back send_fax looks for a fax an uncertain earlier POST may have created, and how
# many pages of the (newest first) list it reads at most while looking.
_DEDUPE_WINDOW = timedelta(minutes=10)
_DEDUPE_MAX_PAGES = 10

_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class VoxtelesysClient:
    """Async client of the Voxtelesys Fax REST API; use with `async with` or call close()."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.retry = retry or DEFAULT_RETRY
        self._session = session
        # A session handed in belongs to the caller, who closes it.
        self._owns_session = session is None
        # The proxy from the environment for base_url and its login, looked up once.
        self._proxy: tuple[URL | None, dict[str, str]] | None = None

    @classmethod
    def from_config(
        cls,
        config: VoxtelesysConfig,
        *,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> VoxtelesysClient:
        return cls(
            config.base_url,
            config.api_key.get_secret_value(),
            timeout=config.timeout_seconds,
            retry=retry,
            session=session,
        )

    def __repr__(self) -> str:
        return f"VoxtelesysClient({self.base_url!r})"

    async def __aenter__(self) -> VoxtelesysClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the session now (the daemon's component protocol); requests also open it."""
        self._client_session()

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API -------------------------------------------------------------------------

    async def send_fax(
        self, to: str, from_: str, url: str, attempts: int | None = None
    ) -> CarrierFax:
        """Create an outbound fax of the document at `url`; returns it, usually `queued`.

        Numbers go to the API as E.164 with '+', as the field table of the documentation
        specifies ("+15556667777"); its example body shows bare digits, and the carrier's own
        answers use digits, but the field table is the specification and '+' is unambiguous.

        The API has no idempotency key, so a retried POST could send the fax twice. After a
        failure that leaves it open whether the fax was created (a 5xx, a timeout, a dropped
        connection), the next attempt first looks for a fax with this URL and recipient
        created since shortly before this call, and returns it instead of posting again.
        Only a refused connection (nothing was sent) is retried without looking.
        """
        body: dict[str, Any] = {"to": _e164(to), "from": _e164(from_), "url": url}
        if attempts is not None:
            body["attempts"] = attempts
        since = datetime.now(UTC) - _DEDUPE_WINDOW
        uncertain = False

        async def attempt() -> CarrierFax:
            nonlocal uncertain
            if uncertain:
                existing = await self._find(url, body["to"], since=since, retry=False)
                if existing is not None:
                    log.info(
                        "carrier.send_recovered", carrier_id=existing.id, status=existing.status
                    )
                    return existing
            try:
                data = await self._call("POST", "/faxes", body=body)
            except CarrierError as exc:
                if exc.transient and not _never_sent(exc):
                    uncertain = True
                raise
            fax = _fax(data)
            log.info("carrier.fax_created", carrier_id=fax.id, status=fax.status)
            return fax

        return await retrying(
            attempt, policy=self.retry, is_transient=is_transient, operation="carrier.send_fax"
        )

    async def get_fax(self, fax_id: str, *, retry: bool = True) -> CarrierFax:
        """The fax with this id, inbound or outbound; NotFound if the carrier has none.
        `retry=False`: one try (a read ahead of its turn, which its turn can make again)."""
        if not fax_id or not fax_id.strip():
            raise ValueError("fax id is empty")
        path = "/faxes/" + quote(fax_id.strip(), safe="")
        # A 404 is an answer here, not an error: each caller says what it means (a forged
        # webhook, a fax the carrier lost) in a line of its own.
        if not retry:
            return _fax(await self._call("GET", path, quiet=404))
        return _fax(await self._request("GET", path, operation="carrier.get_fax", quiet=404))

    async def list_faxes(self, page: int | None = None) -> AsyncGenerator[CarrierFax, None]:
        """Every fax, inbound and outbound, page after page until the last `next_page`.

        `page` starts at that page number (the documented `page` parameter); later pages are
        reached through the opaque cursor only.
        """
        async for fax in self._pages(page, retry=True):
            yield fax

    async def newest_faxes(self) -> list[CarrierFax]:
        """The first page of the list (GET /faxes): the newest faxes, as many as the carrier
        shows on a page. One request, not retried: for a caller with another way to the same
        records (the events worker's GET /faxes/{id} each), a failure here is only a miss."""
        return _list_entries(await self._call("GET", "/faxes"))

    async def find_fax_by_url(
        self, url: str, to: str, *, since: datetime, max_pages: int = _DEDUPE_MAX_PAGES
    ) -> CarrierFax | None:
        """An outbound fax to `to` of the document at `url`, created at or after `since`.

        For callers that must not send twice (after a crash between POST and recording its
        answer). Relies on the list being newest first, as the carrier's is: it stops at the
        first page whose faxes are all older than `since`, or after `max_pages`.
        """
        return await self._find(url, _e164(to), since=since, retry=True, max_pages=max_pages)

    async def check(self) -> None:
        """One cheap authenticated request (the first page of faxes); raises CarrierError.

        The documentation has no status or account endpoint, so the list is the cheapest call
        that proves both reachability and the key. Not retried: a probe should answer fast.
        """
        await self._call("GET", "/faxes", params={"page": "1"})

    # -- plumbing ------------------------------------------------------------------------

    async def _find(
        self,
        url: str,
        to_e164: str,
        *,
        since: datetime,
        retry: bool,
        max_pages: int = _DEDUPE_MAX_PAGES,
    ) -> CarrierFax | None:
        pages = 0
        page_all_old = True
        async with aclosing(self._pages_marked(None, retry=retry)) as faxes:
            async for fax, first_of_page in faxes:
                if first_of_page:
                    if pages and page_all_old:
                        return None
                    pages += 1
                    if pages > max_pages:
                        return None
                    page_all_old = True
                recent = fax.created_at is None or fax.created_at >= since
                if recent:
                    page_all_old = False
                if (
                    recent
                    and fax.direction == "outbound"
                    and fax.url == url
                    and fax.to_e164 == to_e164
                ):
                    return fax
        return None

    async def _pages(self, page: int | None, *, retry: bool) -> AsyncGenerator[CarrierFax, None]:
        async with aclosing(self._pages_marked(page, retry=retry)) as faxes:
            async for fax, _first in faxes:
                yield fax

    async def _pages_marked(
        self, page: int | None, *, retry: bool
    ) -> AsyncGenerator[tuple[CarrierFax, bool], None]:
        """(fax, is-first-on-its-page) over all pages from `page` on."""
        params: dict[str, str] = {} if page is None else {"page": str(page)}
        seen: set[str] = set()
        while True:
            if retry:
                data = await self._request("GET", "/faxes", params=params, operation="list")
            else:
                data = await self._call("GET", "/faxes", params=params)
            first = True
            for fax in _list_entries(data):
                yield fax, first
                first = False
            cursor = data.get("next_page")
            if not cursor:
                return
            cursor = str(cursor)
            if cursor in seen:
                raise BadResponse("the carrier returned the same next_page cursor twice")
            seen.add(cursor)
            params = {"next_page": cursor}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        operation: str,
        quiet: int | None = None,
    ) -> Any:
        return await retrying(
            lambda: self._call(method, path, params=params, body=body, quiet=quiet),
            policy=self.retry,
            is_transient=is_transient,
            operation=operation,
        )

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Not trust_env: with it aiohttp reads the environment and ~/.netrc in a thread on
            # every request (two thread hops per GET), and a netrc entry for the carrier's host
            # would clash with our Authorization header. The proxy is looked up once instead.
            self._session = aiohttp.ClientSession()
        return self._session

    async def _env_proxy(self) -> tuple[URL | None, dict[str, str]]:
        """The proxy the environment names for base_url (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, and
        the proxy's login from its URL or netrc) as aiohttp's trust_env finds it, and the
        Proxy-Authorization header of that login; looked up once: a process's environment
        does not change under it."""
        if self._proxy is None:
            try:
                proxy, login = await asyncio.to_thread(get_env_proxy_for_url, URL(self.base_url))
            except LookupError:  # no proxy for this URL
                self._proxy = (None, {})
            else:
                self._proxy = (proxy, {"Proxy-Authorization": login.encode()} if login else {})
        return self._proxy

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        quiet: int | None = None,
    ) -> Any:
        """One HTTP request without retries: the decoded JSON body, or a CarrierError (logged,
        unless its status is `quiet`)."""
        session = self._client_session()
        proxy, login = await self._env_proxy()
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": f"fax-gateway/{__version__}",
        }
        # The proxy's login goes where the proxy reads it: on the request itself when the proxy
        # forwards plain HTTP, on the CONNECT that opens the tunnel for HTTPS.
        tunnel = self.base_url.startswith("https:")
        if not tunnel:
            headers.update(login)
        started = time.monotonic()
        try:
            async with session.request(
                method,
                self.base_url + path,
                params=params,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # A POST must never silently become a GET on another host.
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=login if tunnel and login else None,
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason or ""
        except TimeoutError as exc:
            raise CarrierUnavailable(
                f"no answer to {method} {path} within {self.timeout:g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise CarrierUnavailable(
                f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise CarrierUnavailable(
                f"{method} {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        elapsed_ms = round((time.monotonic() - started) * 1000)
        log.debug("carrier.request", method=method, path=path, status=status, ms=elapsed_ms)
        if 200 <= status < 300:
            try:
                return json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise BadResponse(
                    f"the carrier answered {method} {path} with a body that is not JSON",
                    http_status=status,
                ) from None
        message, error_id = _error_details(raw, status, reason)
        error = error_for_status(status, message, error_id)
        if isinstance(error, AuthError):
            log.error(
                "carrier.auth_failed",
                status=status,
                message=message,
                error_id=error_id,
                hint="the carrier refused the API key: check voxtelesys.api_key",
            )
        elif status != quiet:
            log.warning(
                "carrier.error",
                method=method,
                path=path,
                status=status,
                message=message,
                error_id=error_id,
            )
        raise error


def _fax(data: Any) -> CarrierFax:
    try:
        return CarrierFax.from_api(data)
    except PayloadError as exc:
        raise BadResponse(f"the carrier's fax object is unusable: {exc}") from None


def _list_entries(data: Any) -> list[CarrierFax]:
    """The faxes of one page of the list; an unreadable entry is skipped and logged (it must
    not hide the others from the reconciler)."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise BadResponse("the list of faxes has no 'results' array")
    faxes = []
    for item in results:
        try:
            faxes.append(CarrierFax.from_api(item))
        except PayloadError as exc:
            log.warning("carrier.list_entry_skipped", reason=str(exc))
    return faxes


def _error_details(raw: bytes, status: int, reason: str) -> tuple[str, str | None]:
    """Message and error id of an error answer; any body, JSON or not, gives a message."""
    fallback = f"HTTP {status} {reason}".strip()
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = data.get("message") or data.get("error") or ""
        error_id = data.get("error_id")
        return (
            str(message).strip() or fallback,
            str(error_id) if error_id not in (None, "") else None,
        )
    # HTML from a proxy, plain text, or nothing: a short readable excerpt.
    text = _SPACE.sub(" ", _TAGS.sub(" ", raw[:2000].decode("utf-8", "replace"))).strip()
    return (f"{fallback}: {text[:200]}" if text else fallback), None


def _never_sent(exc: CarrierError) -> bool:
    """Whether the request surely did not reach the carrier (the connection was refused)."""
    return isinstance(exc.__cause__, aiohttp.ClientConnectorError)


def _e164(number: str) -> str:
    number = number.strip()
    return number if number.startswith("+") else "+" + number
