"""Inbound faxes to the inbox: fetch the document, keep it safe, mail it, never drop it.

The worker owns three transitions of the `inbound` table (see gateway/store/inbound.py):

1. announced -> stored: download the carrier's media (links.media, else url) over http(s)
   only, within inbound.max_download_bytes and download_timeout_seconds, from public
   addresses or the carrier's own origin (download.py says which, and who gets the API key),
   and write it durably under data.dir/inbound/ before anything else happens to it. Failures
   are retried with backoff (a refused link or document is dead at once); after
   inbound.max_attempts the fax is dead (the carrier still holds it).
2. stored -> mailed: route by the number called (inbound.routes, else default_recipients),
   convert TIFF to PDF as inbound.attach_format asks (in a document worker process:
   gateway/document/workers.py), render the "inbound" mail with a PNG
   preview of page 1 and queue it in the outbox under `inbound:<carrier id>` (once per fax).
   The route's privacy mode (else inbound.attach, gateway/mailout/privacy.py) may encrypt the
   PDF or leave the document out; the preview goes only with attach = "pdf".
   An unroutable fax stays stored, logged at error level, until an operator adds a route.
   With an archive configured (inbound.archive_dir, archive_s3_prefix) a step comes between:
   stored -> archived writes the fax's copy and JSON sidecar (archive.py) before any mail is
   queued, and the mail step takes archived faxes. The step has the queue's claims and
   schedule like the others; a copy written again after a crash overwrites itself.
3. mailed -> done or dead: the outbox worker delivers to the relay with its own retries. Once
   the relay took the mail the stored file is removed (the mailbox is the archive from then
   on). If the outbox has tried inbound.max_attempts times, or gave the mail up, the mail is
   dead-lettered: the outbox stops, the file moves to data.dir/dead-letter/, an error is
   logged, and `fax-gateway queue dead-letter` lists it until someone requeues it.

Helpers live next door: download.py fetches, compose.py builds the mail's parts, files.py
keeps the files and the dead letters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from gateway import log
from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import CarrierError
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.workers import Converted, DocumentWorkers
from gateway.failpoints import failpoint
from gateway.fsutil import write_atomic
from gateway.inbound.archive import Archive
from gateway.inbound.compose import fax_moment, shown_number
from gateway.inbound.download import DownloadError, download
from gateway.inbound.files import (
    locate,
    mail_key,
    move_durably,
    remove_durably,
    stored_name,
)
from gateway.mailout.message import InlineImage, MailAttachment, build_message
from gateway.mailout.outbox import (
    MailingWorker,
    give_up_mail,
    mail_status,
    queue_mail,
    requeue_mail_anew,
)
from gateway.mailout.privacy import inbound_privacy, protect, status_page_url
from gateway.mailout.templates import MailRenderer
from gateway.ops.metrics import Metrics
from gateway.queue.schedule import Clock, crash_message, resource_error
from gateway.store import Database
from gateway.store.blobs import SharedFiles
from gateway.store.inbound import (
    InboundFax,
    InboundState,
    claim_inbound,
    defer_inbound,
    inbound_in_state,
    mark_archived,
    mark_dead,
    mark_mailed,
    mark_stored,
    next_inbound_due,
    revive,
    set_file_path,
    set_media_url,
)
from gateway.store.outbox import OutboxState

logger = log.get_logger(__name__)

# Steps one round takes at most; the runner calls again at once while a round found work.
_BATCH = 50


class InboundWorker(MailingWorker):
    """Moves inbound faxes from announced to mailed; `run_once` returns the steps it took."""

    name = "inbound"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        renderer: MailRenderer,
        outbox_dir: Path,
        documents: DocumentWorkers,
        client: VoxtelesysClient | None = None,
        metrics: Metrics | None = None,
        wake: Callable[[], None] | None = None,
        archive: Archive | None = None,
    ) -> None:
        super().__init__(
            config=config, db=db, clock=clock, renderer=renderer, outbox_dir=outbox_dir
        )
        self.documents = documents
        self.client = client
        self.metrics = metrics
        self.wake = wake
        self.archive = archive or Archive()

    def recipients_for(self, to_number: str) -> tuple[str, ...]:
        """inbound.routes for the number called, else inbound.default_recipients."""
        return self.config.inbound.recipients_for(to_number)

    async def run_once(self) -> int:
        steps = 0
        # Read each round: a reload may turn the archive on (stored faxes are archived first)
        # or off (archived ones are mailed all the same).
        archiving = Archive.wanted(self.config.inbound)
        stages: list[tuple[InboundState | tuple[InboundState, ...], Any]] = [
            (InboundState.ANNOUNCED, self._fetch)
        ]
        if archiving:
            stages += [(InboundState.STORED, self._archive), (InboundState.ARCHIVED, self._mail)]
        else:
            stages.append(((InboundState.STORED, InboundState.ARCHIVED), self._mail))
        for state, step in stages:
            while steps < _BATCH:
                claimed, held = await self.db.run(
                    claim_inbound,
                    state,
                    self.clock(),
                    max_pickups=self.schedule.max_pickups,
                    lease=self.schedule.delay,
                )
                for fax in held:
                    with log.bound(inbound_id=fax.id, carrier_id=fax.carrier_id):
                        await self._held(fax)
                    steps += 1
                if not claimed:
                    if held:
                        continue
                    break
                with log.bound(inbound_id=claimed[0].id, carrier_id=claimed[0].carrier_id):
                    steps += await step(claimed[0])
        for fax in await self.db.run(inbound_in_state, InboundState.MAILED):
            if fax.file_path is None:
                continue  # delivered: the mailbox has it
            with log.bound(inbound_id=fax.id, carrier_id=fax.carrier_id):
                steps += await self._follow(fax)
        return steps

    async def next_due(self) -> float | None:
        return await self.db.run(next_inbound_due)

    async def _held(self, fax: InboundFax) -> None:
        """A step kept being interrupted (a document that kills the process): dead letter."""
        work = {
            InboundState.ANNOUNCED: "fetching the document",
            InboundState.STORED: "composing its mail",
        }.get(fax.state, "composing its mail")
        if fax.state is InboundState.STORED and Archive.wanted(self.config.inbound):
            work = "archiving it"
        error = f"{fax.state}: every attempt was interrupted ({crash_message(fax.pickups, work)})"
        await self._dead_letter(fax, error)

    # -- announced -> stored ---------------------------------------------------------------

    async def _fetch(self, fax: InboundFax) -> int:
        settings = self.config.inbound
        url = fax.media_url
        # The claim counted this attempt: more than one means an earlier one failed.
        if (url is None or fax.attempts > 1) and self.client is not None:
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
                allow_private_media=settings.allow_private_media,
            )
        except DownloadError as exc:
            return await self._download_failed(fax, exc)
        content_type = media.content_type  # PDF or TIFF by its bytes: download refuses the rest
        path = DataDir(self.config.data.dir).inbound / stored_name(fax, content_type)
        # Durable first: once the row says stored, the file is on disk whatever happens next.
        try:
            await asyncio.to_thread(write_atomic, path, media.data)
        except (OSError, MemoryError) as exc:
            if not resource_error(exc):
                raise
            return await self._short_of_resources(fax, f"storing the document: {exc}")
        failpoint("after_download")
        # With the document itself where nodes share the store (store/blobs.py).
        await self.db.run(mark_stored, fax.id, str(path), self.clock(), files=[(path, media.data)])
        failpoint("after_inbound_stored")
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
        attempts = fax.attempts  # counted by the claim
        now = self.clock()
        if not exc.transient or attempts >= self.config.inbound.max_attempts:
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
        delay = self.schedule.delay(attempts)
        await self.db.run(defer_inbound, fax.id, f"download: {exc}", now + delay, now)
        logger.warning(
            "inbound.download_failed", attempts=attempts, delay=round(delay, 1), error=str(exc)
        )
        return 1

    # -- stored -> archived (with an archive configured) -------------------------------------

    async def _archive(self, fax: InboundFax) -> int:
        recipients = self.recipients_for(fax.to_number)
        if not recipients:
            # Archived once it is known whom it goes to: the sidecar names them.
            return await self._unrouted(fax)
        try:
            path = await self._locate(fax)
            if path is None:
                raise FileNotFoundError(f"stored document {fax.file_path} is missing")
            data = await asyncio.to_thread(path.read_bytes)
            # The copy is a PDF, made in a document worker like the mail's (a TIFF that will
            # not convert, or of more than inbound.max_pages, is archived as it came).
            converted = await self.documents.inbound(
                fax, data, files=True, preview=False, attach_format="pdf"
            )
            _name, content_type, document = converted.attachments[0]
            places = await self.archive.keep(
                self.config.inbound, fax, document, content_type, recipients
            )
        except Exception as exc:
            # Retried like a mail that could not be built (same attempts, same dead letter).
            return await self._mail_failed(fax, exc, step="archive")
        failpoint("after_inbound_archived")
        await self.db.run(mark_archived, fax.id, self.clock())
        logger.info("inbound.archived", places=places)
        return 1

    # -- stored (or archived) -> mailed ------------------------------------------------------

    async def _unrouted(self, fax: InboundFax) -> int:
        # Not an attempt: nothing failed, the gateway lacks a route. The fax waits (checked
        # again at the longest backoff) until a route is configured.
        now = self.clock()
        await self.db.run(
            defer_inbound,
            fax.id,
            "no recipients: no route for this number and no default_recipients",
            now + self.config.queue.max_backoff_seconds,
            now,
            tried=False,
        )
        logger.error(
            "inbound.unrouted",
            to_number=fax.to_number,
            path=fax.file_path,
            hint="add the number to [inbound.routes] or set inbound.default_recipients;"
            " the fax is kept",
        )
        return 0

    async def _mail(self, fax: InboundFax) -> int:
        recipients = self.recipients_for(fax.to_number)
        if not recipients:
            return await self._unrouted(fax)
        # The claim counted this attempt and made the fax due again later before the document
        # is opened: converting a caller's file may crash or exhaust the process, and a restart
        # must then neither try it again at once nor forever (the crash guard holds it).
        try:
            path = await self._locate(fax)
            if path is None:
                raise FileNotFoundError(f"stored document {fax.file_path} is missing")
            data = await asyncio.to_thread(path.read_bytes)
            # Decoding a caller's TIFF or PDF runs in a document worker (memory, time budget).
            privacy = inbound_privacy(self.config, fax.to_number)
            converted = await self.documents.inbound(
                fax,
                data,
                files=privacy.carries_document,
                pdf_only=privacy.encrypted,
                preview=privacy.shows_preview,
            )
            message = await asyncio.to_thread(self._compose, fax, converted, recipients)
            key = mail_key(fax.carrier_id)
            queued = await queue_mail(
                self.db,
                self.outbox_dir,
                key=key,
                kind="inbound",
                message=message,
                recipients=list(recipients),
            )
            if not queued:
                # Queued before (a requeue from the dead letters whose mail file was gone, or
                # a crash after queueing): the outbox sends this rendering if it must.
                await requeue_mail_anew(self.db, self.outbox_dir, key=key, message=message)
        except Exception as exc:
            return await self._mail_failed(fax, exc)
        await self.db.run(mark_mailed, fax.id, self.clock())
        logger.info(
            "inbound.mailed",
            recipients=len(recipients),
            already_queued=not queued,
            attach=inbound_privacy(self.config, fax.to_number).attach,
        )
        return 1

    def _compose(
        self, fax: InboundFax, converted: Converted, recipients: tuple[str, ...]
    ) -> EmailMessage:
        privacy = inbound_privacy(self.config, fax.to_number)
        attachments = [protect(MailAttachment(*file), privacy) for file in converted.attachments]
        preview = InlineImage(*converted.preview) if converted.preview else None
        rendered = self.renderer.render(
            "inbound",
            {
                "from_number": shown_number(fax.from_number),
                "to_number": shown_number(fax.to_number),
                "pages": fax.pages,
                "duration": fax.duration,
                "time": fax_moment(fax),
                "carrier_id": fax.carrier_id,
                "attachments": [a.filename for a in attachments],
                "preview_cid": preview.cid if preview else None,
                "attach": privacy.attach,
                "status_url": status_page_url(self.config),
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

    async def _short_of_resources(self, fax: InboundFax, error: str) -> int:
        """A full disk, no memory or file descriptors: the fax waits, and the attempt its claim
        counted is taken back (the machine failed, not the fax)."""
        now = self.clock()
        delay = self.schedule.delay(max(fax.attempts, 1))
        await self.db.run(defer_inbound, fax.id, error, now + delay, now, tried=False)
        logger.error("inbound.deferred", error=error, delay=round(delay, 1))
        return 1

    async def _mail_failed(self, fax: InboundFax, exc: Exception, step: str = "mail") -> int:
        if resource_error(exc):
            return await self._short_of_resources(fax, f"{step}: {type(exc).__name__}: {exc}")
        attempts = fax.attempts  # counted by the claim
        error = f"{step}: {type(exc).__name__}: {exc}"
        now = self.clock()
        if attempts >= self.config.inbound.max_attempts:
            await self._dead_letter(fax, error)
            return 1
        delay = self.schedule.delay(attempts)
        await self.db.run(defer_inbound, fax.id, error, now + delay, now)
        logger.warning(
            f"inbound.{step}_failed", attempts=attempts, delay=round(delay, 1), error=error
        )
        return 1

    # -- mailed -> done or dead --------------------------------------------------------------

    async def _follow(self, fax: InboundFax) -> int:
        """Remove the file once the relay took the mail; dead-letter it when the outbox
        has tried inbound.max_attempts times or gave the mail up."""
        key = mail_key(fax.carrier_id)
        entry = await mail_status(self.db, key)
        if entry is None:
            # The outbox lost the mail (its row removed by hand?): queue it again from the file.
            await self.db.run(revive, fax.id, InboundState.STORED, fax.file_path, self.clock())
            logger.warning("inbound.mail_missing", hint="queued again from the stored file")
            return 1
        if entry.state is OutboxState.SENT:
            await self._delivered(fax)
            return 1
        if entry.state is OutboxState.PENDING:
            if entry.attempts < self.config.inbound.max_attempts:
                return 0
            # The outbox refuses while a send of it is under way: asked again next round, so
            # a mail the relay took is never dead-lettered.
            reason = (
                f"inbound.max_attempts ({self.config.inbound.max_attempts}) reached:"
                f" {entry.error or 'not delivered'}"
            )
            if not await give_up_mail(self.db, key, reason, self.clock()):
                return 0
        await self._dead_letter(fax, f"mail not delivered: {entry.error or entry.state}")
        return 1

    async def _delivered(self, fax: InboundFax) -> None:
        path = await self._locate(fax, fetch=False)
        if path is not None:
            await asyncio.to_thread(remove_durably, path)
        await self.db.run(set_file_path, fax.id, None, self.clock())
        logger.info("inbound.delivered")
        self._count("mailed")

    async def _dead_letter(self, fax: InboundFax, error: str) -> None:
        path = await self._locate(fax)
        moved: Path | None = None
        if path is not None:
            folder = DataDir(self.config.data.dir).dead_letter
            moved = await asyncio.to_thread(move_durably, path, folder)
        await self.db.run(mark_dead, fax.id, str(moved) if moved else None, error, self.clock())
        logger.error(
            "inbound.dead_letter",
            error=error,
            path=str(moved) if moved else None,
            hint="the file is kept; `fax-gateway queue dead-letter` lists it and can requeue it",
        )
        self._count("dead")

    async def _locate(self, fax: InboundFax, *, fetch: bool = True) -> Path | None:
        if fax.file_path is None:
            return None
        files = SharedFiles.of(self.config, self.db)
        recorded = Path(fax.file_path)
        found = await asyncio.to_thread(lambda: locate(files.local(recorded), self.config))
        if found is None and fetch and files.shared:
            # Stored by another node: this node's copy, from the store.
            fetched = await files.fetch(recorded)
            found = fetched if fetched.exists() else None
        return found

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.inbound_faxes.labels(status=status).inc()
