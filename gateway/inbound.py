"""Inbound faxes to the inbox: fetch the document, keep it safe, mail it, never drop it.

The worker owns three transitions of the `inbound` table (see gateway/store/inbound.py):

1. announced -> stored: download the carrier's media (links.media, else url) over http(s)
   only, within inbound.max_download_bytes and download_timeout_seconds, and write it durably
   under data.dir/inbound/ before anything else happens to it. Failures are retried with
   backoff; after inbound.max_attempts the fax is dead (the carrier still holds it).
2. stored -> mailed: route by the number called (inbound.routes, else default_recipients),
   convert TIFF to PDF as inbound.attach_format asks, render the "received" mail with a PNG
   preview of page 1 and queue it in the outbox under `inbound:<carrier id>` (once per fax).
   An unroutable fax stays stored, logged at error level, until an operator adds a route.
3. mailed -> done or dead: the outbox worker delivers to the relay with its own retries. Once
   the relay took the mail the stored file is removed (the mailbox is the archive from then
   on). If the outbox has tried inbound.max_attempts times, or gave the mail up, the mail is
   dead-lettered: the outbox stops, the file moves to data.dir/dead-letter/, an error is
   logged, and `fax-gateway queue dead-letter` lists it until someone requeues it.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from gateway import log
from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import CarrierError
from gateway.config import Config
from gateway.document import kinds
from gateway.document.convert import tiff_to_pdf
from gateway.document.preview import first_page_png
from gateway.fsutil import fsync_dir, write_atomic
from gateway.mail import InlineImage, MailAttachment, MailRenderer, build_message
from gateway.metrics import Metrics
from gateway.outbox import queue_mail
from gateway.retry import backoff_delay
from gateway.store import Database
from gateway.store import outbox as outbox_store
from gateway.store.inbound import (
    InboundFax,
    InboundState,
    defer_inbound,
    due_inbound,
    get_inbound,
    inbound_in_state,
    mark_dead,
    mark_mailed,
    mark_stored,
    revive,
    set_file_path,
    set_media_url,
)
from gateway.store.outbox import OutboxState

logger = log.get_logger(__name__)

INBOUND_DIR = "inbound"
DEAD_LETTER_DIR = "dead-letter"

# Redirects followed for one download (presigned storage URLs often redirect once).
_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
# What a withheld or odd caller id may look like to be shown as it is ("anonymous",
# "Restricted", "+1 (201) 555-0100" spelled oddly).
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 +()-]{0,31}")


class DownloadError(Exception):
    """The media could not be fetched; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Media:
    data: bytes
    content_type: str | None


def inbound_dir(config: Config) -> Path:
    return config.data.dir / INBOUND_DIR


def dead_letter_dir(config: Config) -> Path:
    return config.data.dir / DEAD_LETTER_DIR


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
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise DownloadError(
                    f"refusing to fetch a non-http(s) URL ({parts.scheme}:)", permanent=True
                )
            headers = {"Accept": "application/pdf, image/tiff, */*"}
            if _origin(url) == carrier_origin:
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
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise DownloadError(
                            f"HTTP {response.status} {response.reason or ''}".strip()
                        )
                    if response.content_length is not None and response.content_length > max_bytes:
                        raise DownloadError(
                            f"media is {response.content_length} bytes, more than"
                            f" inbound.max_download_bytes ({max_bytes})",
                            permanent=True,
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
                f"media is larger than inbound.max_download_bytes ({max_bytes})", permanent=True
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, f"{(parts.hostname or '').lower()}:{port}"


def stored_name(fax: InboundFax, content_type: str | None) -> str:
    """File name under inbound/: unique by row id, recognisable by the carrier id."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", fax.carrier_id)[:80]
    return f"{fax.id:06d}-{safe_id}{kinds.extension(content_type or '')}"


def shown_number(raw: str) -> str:
    """A number the carrier gave, safe to put in a mail: '+digits' for a number, a short plain
    label for anything else ('anonymous'), 'unknown' when there is nothing usable.

    Callers may withhold their number, and the carrier passes on whatever it got, so nothing
    about this text is trusted: no line breaks, no markup, no address-like text survives.
    """
    text = " ".join(raw.split())
    digits = text.removeprefix("+")
    if digits.isdigit() and len(digits) <= 15:
        return "+" + digits
    if _LABEL.fullmatch(text):
        return text
    return "unknown"


def fax_moment(fax: InboundFax) -> datetime:
    """When the fax arrived: the carrier's time, else when we first heard of it (UTC)."""
    if fax.fax_time:
        try:
            moment = datetime.fromisoformat(fax.fax_time.strip())
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(fax.created_at, UTC)


def attachment_stem(fax: InboundFax) -> str:
    """`fax-2024-06-19-1538-from-15556668888`: sorts by time, names the caller."""
    when = fax_moment(fax).astimezone(UTC)
    caller = re.sub(r"[^0-9]", "", fax.from_number) or "unknown"
    return f"fax-{when:%Y-%m-%d-%H%M}-from-{caller}"


def attachments_for(fax: InboundFax, data: bytes, attach_format: str) -> list[MailAttachment]:
    """The files to mail for the stored document, as inbound.attach_format asks.

    A TIFF becomes a PDF for "pdf", stays a TIFF for "tiff", and goes as both for "both". A
    document that is already a PDF goes as it is whatever the setting (there is no sensible
    TIFF of it to make). When the conversion fails the TIFF is sent rather than nothing.
    Blocking (conversion): run in a thread.
    """
    stem = attachment_stem(fax)
    kind = kinds.sniff(data)
    if kind != kinds.TIFF:
        content_type = kind or "application/octet-stream"
        return [MailAttachment(stem + kinds.extension(content_type), content_type, data)]
    result: list[MailAttachment] = []
    if attach_format in ("pdf", "both"):
        try:
            result.append(MailAttachment(stem + ".pdf", kinds.PDF, tiff_to_pdf(data)))
        except Exception as exc:
            logger.warning("inbound.convert_failed", error=f"{type(exc).__name__}: {exc}")
    if attach_format in ("tiff", "both") or not result:
        result.append(MailAttachment(stem + ".tif", kinds.TIFF, data))
    return result


def preview_of(fax: InboundFax, data: bytes) -> InlineImage | None:
    """A PNG of page 1 for the HTML part, or None (the mail goes without one). Blocking."""
    kind = kinds.sniff(data)
    if kind is None:
        return None
    try:
        png = first_page_png(data, kind)
    except Exception as exc:
        logger.warning("inbound.preview_failed", error=f"{type(exc).__name__}: {exc}")
        return None
    safe_id = re.sub(r"[^A-Za-z0-9]", "", fax.carrier_id)[:40] or str(fax.id)
    return InlineImage(f"page1.{safe_id}@fax-gateway", kinds.PNG, png)


def locate(path: Path, config: Config) -> Path | None:
    """Where a stored document is now: its recorded path, or the same name in the other folder.

    A crash between moving a file (dead letter, requeue) and recording its new path leaves the
    record one step behind; the file is then found by its unique name.
    """
    if path.exists():
        return path
    for folder in (inbound_dir(config), dead_letter_dir(config)):
        candidate = folder / path.name
        if candidate.exists():
            return candidate
    return None


def move_durably(source: Path, folder: Path) -> Path:
    """Move `source` into `folder` (same file system: both under data.dir). Blocking."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if source != target:
        os.replace(source, target)
        fsync_dir(folder)
        fsync_dir(source.parent)
    return target


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


class InboundWorker:
    """Moves inbound faxes from announced to mailed; `run_once` returns the steps it took."""

    name = "inbound"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        renderer: MailRenderer,
        outbox_dir: Path,
        client: VoxtelesysClient | None = None,
        metrics: Metrics | None = None,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.db = db
        self.renderer = renderer
        self.outbox_dir = outbox_dir
        self.client = client
        self.metrics = metrics
        self.wake = wake
        self.clock = clock

    def recipients_for(self, to_number: str) -> tuple[str, ...]:
        """inbound.routes for the number called, else inbound.default_recipients."""
        e164 = to_number if to_number.startswith("+") else "+" + to_number
        routed = self.config.inbound.routes.get(e164)
        return routed if routed else self.config.inbound.default_recipients

    async def run_once(self) -> int:
        steps = 0
        now = self.clock()
        for fax in await self.db.run(due_inbound, InboundState.ANNOUNCED, now):
            with log.bound(inbound_id=fax.id, fax_id=fax.carrier_id):
                steps += await self._fetch(fax)
        for fax in await self.db.run(due_inbound, InboundState.STORED, now):
            with log.bound(inbound_id=fax.id, fax_id=fax.carrier_id):
                steps += await self._mail(fax)
        for fax in await self.db.run(inbound_in_state, InboundState.MAILED):
            if fax.file_path is None:
                continue  # delivered: the mailbox has it
            with log.bound(inbound_id=fax.id, fax_id=fax.carrier_id):
                steps += await self._follow(fax)
        for fax in await self.db.run(inbound_in_state, InboundState.DEAD):
            if fax.file_path is None:
                continue
            with log.bound(inbound_id=fax.id, fax_id=fax.carrier_id):
                steps += await self._heal(fax)
        return steps

    # -- announced -> stored ---------------------------------------------------------------

    async def _fetch(self, fax: InboundFax) -> int:
        settings = self.config.inbound
        url = fax.media_url
        if (url is None or fax.attempts > 0) and self.client is not None:
            # A media link may be missing or expired (presigned links are): ask again.
            url = await self._fresh_media_url(fax) or url
        if url is None:
            return await self._download_failed(
                fax, DownloadError("the carrier gave no media URL for this fax")
            )
        try:
            media = await download(
                url,
                max_bytes=settings.max_download_bytes,
                time_limit=settings.download_timeout_seconds,
                carrier_base_url=self.config.voxtelesys.base_url,
                api_key=self.config.voxtelesys.api_key.get_secret_value(),
            )
        except DownloadError as exc:
            return await self._download_failed(fax, exc)
        content_type = kinds.sniff(media.data) or _declared(media.content_type)
        path = inbound_dir(self.config) / stored_name(fax, content_type)
        # Durable first: once the row says stored, the file is on disk whatever happens next.
        await asyncio.to_thread(write_atomic, path, media.data)
        await self.db.run(mark_stored, fax.id, str(path), self.clock())
        logger.info(
            "inbound.stored", bytes=len(media.data), content_type=content_type, path=str(path)
        )
        return 1

    async def _fresh_media_url(self, fax: InboundFax) -> str | None:
        assert self.client is not None
        try:
            record = await self.client.get_fax(fax.carrier_id)
        except CarrierError as exc:
            logger.warning("inbound.refresh_failed", error=str(exc))
            return None
        url = record.media_url or record.url
        if url and url != fax.media_url:
            await self.db.run(set_media_url, fax.id, url, self.clock())
        return url

    async def _download_failed(self, fax: InboundFax, exc: DownloadError) -> int:
        attempts = fax.attempts + 1
        now = self.clock()
        if exc.permanent or attempts >= self.config.inbound.max_attempts:
            await self.db.run(mark_dead, fax.id, None, f"download: {exc}", now)
            logger.error(
                "inbound.download_gave_up",
                attempts=attempts,
                error=str(exc),
                hint="the fax is still at the carrier; `fax-gateway queue dead-letter`"
                " can requeue it",
            )
            self._count("dead")
            return 1
        delay = self._backoff(attempts)
        await self.db.run(defer_inbound, fax.id, f"download: {exc}", now + delay, now)
        logger.warning(
            "inbound.download_failed", attempts=attempts, delay=round(delay, 1), error=str(exc)
        )
        return 1

    # -- stored -> mailed ------------------------------------------------------------------

    async def _mail(self, fax: InboundFax) -> int:
        now = self.clock()
        recipients = self.recipients_for(fax.to_number)
        if not recipients:
            # Not counted as an attempt: nothing failed, the gateway lacks a route. The fax
            # waits (checked again at the longest backoff) until a route is configured.
            await self.db.run(
                defer_inbound,
                fax.id,
                "no recipients: no route for this number and no default_recipients",
                now + self.config.queue.max_backoff_seconds,
                now,
                count=False,
            )
            logger.error(
                "inbound.unrouted",
                to_number=fax.to_number,
                path=fax.file_path,
                hint="add the number to [inbound.routes] or set inbound.default_recipients;"
                " the fax is kept",
            )
            return 0
        try:
            path = locate(Path(fax.file_path or ""), self.config) if fax.file_path else None
            if path is None:
                raise FileNotFoundError(f"stored document {fax.file_path} is missing")
            data = await asyncio.to_thread(path.read_bytes)
            message = await asyncio.to_thread(self._compose, fax, data, recipients)
            queued = await queue_mail(
                self.db,
                self.outbox_dir,
                key=mail_key(fax.carrier_id),
                kind="received",
                message=message,
                recipients=list(recipients),
            )
            if not queued:
                await self._rebuild_given_up(fax, message)
        except Exception as exc:
            return await self._mail_failed(fax, exc)
        await self.db.run(mark_mailed, fax.id, self.clock())
        logger.info("inbound.mailed", recipients=len(recipients), already_queued=not queued)
        return 1

    def _compose(self, fax: InboundFax, data: bytes, recipients: tuple[str, ...]) -> EmailMessage:
        attachments = attachments_for(fax, data, self.config.inbound.attach_format)
        preview = preview_of(fax, data)
        rendered = self.renderer.render(
            "received",
            {
                "from_number": shown_number(fax.from_number),
                "to_number": shown_number(fax.to_number),
                "pages": fax.pages,
                "duration": fax.duration,
                "time": fax_moment(fax),
                "fax_id": fax.carrier_id,
                "attachments": [a.filename for a in attachments],
                "preview_cid": preview.cid if preview else None,
            },
        )
        return build_message(
            from_address=self.config.relay.from_address,
            to=recipients,
            rendered=rendered,
            attachments=attachments,
            inline_images=[preview] if preview else [],
            message_id_domain=self.config.smtp.domain,
        )

    async def _mail_failed(self, fax: InboundFax, exc: Exception) -> int:
        attempts = fax.attempts + 1
        error = f"mail: {type(exc).__name__}: {exc}"
        now = self.clock()
        if attempts >= self.config.inbound.max_attempts:
            await self._dead_letter(fax, error)
            return 1
        delay = self._backoff(attempts)
        await self.db.run(defer_inbound, fax.id, error, now + delay, now)
        logger.warning("inbound.mail_failed", attempts=attempts, delay=round(delay, 1), error=error)
        return 1

    # -- mailed -> done or dead --------------------------------------------------------------

    async def _follow(self, fax: InboundFax) -> int:
        """Remove the file once the relay took the mail; dead-letter it when the outbox
        has tried inbound.max_attempts times or gave the mail up."""
        entry = await self.db.run(outbox_store.get_by_key, mail_key(fax.carrier_id))
        if entry is None:
            # The outbox lost the mail (its row removed by hand?): queue it again from the file.
            await self.db.run(revive, fax.id, InboundState.STORED, fax.file_path, self.clock())
            logger.warning("inbound.mail_missing", hint="queued again from the stored file")
            return 1
        if entry.state is OutboxState.SENT:
            await self._delivered(fax)
            return 1
        given_up = entry.state in (OutboxState.FAILED, OutboxState.DEAD)
        if given_up or entry.attempts >= self.config.inbound.max_attempts:
            if not given_up:
                # If a send is in flight right now and succeeds, the outbox records it as sent
                # all the same, and `_heal` takes the fax out of the dead letters again.
                await self.db.run(
                    outbox_store.mark_dead,
                    entry.id,
                    f"inbound.max_attempts ({self.config.inbound.max_attempts}) reached:"
                    f" {entry.error or 'not delivered'}",
                    self.clock(),
                )
            await self._dead_letter(fax, f"mail not delivered: {entry.error or entry.state}")
            return 1
        return 0

    async def _delivered(self, fax: InboundFax) -> None:
        path = locate(Path(fax.file_path), self.config) if fax.file_path else None
        if path is not None:
            await asyncio.to_thread(remove_durably, path)
        await self.db.run(set_file_path, fax.id, None, self.clock())
        logger.info("inbound.delivered")
        self._count("mailed")

    async def _heal(self, fax: InboundFax) -> int:
        """A dead-lettered fax whose mail went out after all (sent while being given up)."""
        entry = await self.db.run(outbox_store.get_by_key, mail_key(fax.carrier_id))
        if entry is None or entry.state is not OutboxState.SENT:
            return 0
        await self.db.run(revive, fax.id, InboundState.MAILED, fax.file_path, self.clock())
        await self._delivered(fax)
        logger.warning("inbound.delivered_after_all", hint="removed from the dead letters")
        return 1

    async def _dead_letter(self, fax: InboundFax, error: str) -> None:
        path = locate(Path(fax.file_path), self.config) if fax.file_path else None
        moved: Path | None = None
        if path is not None:
            moved = await asyncio.to_thread(move_durably, path, dead_letter_dir(self.config))
        await self.db.run(mark_dead, fax.id, str(moved) if moved else None, error, self.clock())
        logger.error(
            "inbound.dead_letter",
            error=error,
            path=str(moved) if moved else None,
            hint="the file is kept; `fax-gateway queue dead-letter` lists it and can requeue it",
        )
        self._count("dead")

    def _backoff(self, attempts: int) -> float:
        queue = self.config.queue
        return backoff_delay(attempts, queue.min_backoff_seconds, queue.max_backoff_seconds)

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.inbound_faxes.labels(status=status).inc()


def mail_key(carrier_id: str) -> str:
    """The outbox key of an inbound fax's mail: one mail per fax, however often queued."""
    return f"inbound:{carrier_id}"


def _declared(content_type: str | None) -> str | None:
    if not content_type:
        return None
    bare = content_type.split(";", 1)[0].strip().lower()
    return bare or None


# -- dead letters (the queue tools) ---------------------------------------------------------


def list_dead_letters(conn: sqlite3.Connection) -> list[InboundFax]:
    """Inbound faxes that could not be mailed (or fetched), oldest first."""
    return inbound_in_state(conn, InboundState.DEAD)


def requeue_dead_letter(
    conn: sqlite3.Connection,
    inbound_id: int,
    *,
    data_dir: Path | None = None,
    now: float | None = None,
) -> InboundState:
    """Give a dead inbound fax another round; the state it is back in.

    With its file: the file returns to data.dir/inbound/ and its mail is requeued in the
    outbox with a fresh attempt count (mailed), or built again if the outbox no longer has it
    (stored). Without a file (the download gave up): it is fetched again (announced).
    `data_dir` defaults to the folder above the dead-letter one the file is in. Blocking:
    command-line tools call it directly, the daemon through `Database.run`.
    Raises LookupError for an unknown id and ValueError for a fax that is not dead.
    """
    at = time.time() if now is None else now
    fax = get_inbound(conn, inbound_id)
    if fax is None:
        raise LookupError(f"no inbound fax {inbound_id}")
    if fax.state is not InboundState.DEAD:
        raise ValueError(f"inbound fax {inbound_id} is {fax.state}, not dead")
    if fax.file_path is None:
        revive(conn, fax.id, InboundState.ANNOUNCED, None, at)
        return InboundState.ANNOUNCED
    recorded = Path(fax.file_path)
    base = data_dir if data_dir is not None else recorded.parent.parent
    source = recorded if recorded.exists() else base / DEAD_LETTER_DIR / recorded.name
    if not source.exists():
        source = base / INBOUND_DIR / recorded.name
    if not source.exists():
        raise FileNotFoundError(f"the file of inbound fax {inbound_id} ({recorded}) is missing")
    path = move_durably(source, base / INBOUND_DIR)
    entry = outbox_store.get_by_key(conn, mail_key(fax.carrier_id))
    if entry is not None and entry.state is not OutboxState.SENT and entry.message_path.exists():
        outbox_store.requeue(conn, entry.id, at)
        state = InboundState.MAILED
    else:
        # Sent after all, or its message file is gone: the mail step builds it again (and
        # requeues the outbox entry with it) or finds it sent.
        state = InboundState.STORED
    revive(conn, fax.id, state, str(path), at)
    return state
