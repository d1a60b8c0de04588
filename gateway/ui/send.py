"""Send a fax from the browser: the same policy and the same pipeline as a mail to the gateway.

The form's file and cover text become a mail message, From the logged-in user, to
`<number>@<smtp.domain>`, with the cover text as its body (it shows on the cover page when
covers are enabled, as a mail's body does). That message then takes the path of SMTP DATA:
relay policy for the sender (RelayPolicy.check_mail, as an authenticated login), the number
and toll-fraud rules (check_number), the daily limit, free space, and the DATA check itself
(DocumentWorkers.check in a document worker: text and, with documents.convert_office, office
files become PDF, LibreOffice's PDFs spooled beside the message); then spool (fsync),
create_job (commit), wake. The workers cannot tell it from mail.

Each form carries a one-time id that becomes the message's Message-ID, so a form sent twice
(a double click, a reload) is found by the SMTP resend check and queued once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.kinds import sniff
from gateway.document.mime import DocumentError
from gateway.document.office import ConversionBusy, OfficeConverter
from gateway.document.pool import WorkerDied, WorkersStopped
from gateway.document.workers import DocumentWorkers
from gateway.mailout.message import clean_filename
from gateway.smtp import replies
from gateway.smtp.limits import DailyLimit
from gateway.smtp.options import MessageOptions, message_settings
from gateway.smtp.policy import IPAddress, RelayPolicy
from gateway.store import Database
from gateway.store.jobs import create_job, find_resent_job
from gateway.store.records import NewJob, new_job_id
from gateway.store.spool import Spool

logger = log.get_logger(__name__)

_REPLY_CODES = re.compile(r"^\d{3}[ -](\d\.\d{1,3}\.\d{1,3} )?")
MESSAGE_ID_DOMAIN = "ui.fax-gateway.invalid"
_FORM_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_form_id() -> str:
    return secrets.token_urlsafe(18)


def plain(reply: str) -> str:
    """An SMTP reply as a sentence for a page: without its codes."""
    return _REPLY_CODES.sub("", reply).strip()


@dataclass(frozen=True)
class Upload:
    number: str
    filename: str
    content_type: str
    data: bytes
    cover_text: str
    subject: str
    form_id: str


@dataclass(frozen=True)
class Sent:
    job_id: str | None  # None: refused
    problem: str | None = None
    number: str | None = None


def build_message(config: Config, sender: str, e164: str, upload: Upload, message_id: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"{e164}@{config.smtp.domain}"
    message["Subject"] = upload.subject or f"Fax to {e164}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id
    message.set_content(upload.cover_text or "")
    kind = sniff(upload.data) or upload.content_type or "application/octet-stream"
    maintype, _, subtype = kind.partition("/")
    message.add_attachment(
        upload.data,
        maintype=maintype or "application",
        subtype=subtype or "octet-stream",
        # The browser's name for the file, as a mail client would write one: a name sent as
        # filename*=UTF-8''...%0D%0A... carries line breaks, which no header may hold (the
        # email package raised ValueError: a 500).
        filename=clean_filename(upload.filename, kind) if upload.filename else "document",
    )
    return message.as_bytes()


class WebSender:
    """Queues faxes sent from the browser; one per gateway."""

    def __init__(
        self,
        config: Config,
        db: Database,
        spool: Spool,
        wake: Callable[[], None],
        *,
        documents: DocumentWorkers,
        office: OfficeConverter,
        daily_limit: Callable[[], DailyLimit | None] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.spool = spool
        self.wake = wake
        # The daemon's, shared with the SMTP handler: one DATA check, one set of LibreOffice
        # slots for both ways in.
        self.documents = documents
        self.office = office
        self._own_limit = DailyLimit(db)
        # The SMTP handler's, once it exists: one lock for both ways in, so mail and the
        # browser cannot pass a sender's limit together.
        self._daily_limit = daily_limit

    def _limit(self) -> DailyLimit:
        shared = self._daily_limit() if self._daily_limit is not None else None
        return shared or self._own_limit

    async def send(self, user: str, ip: IPAddress | None, upload: Upload) -> Sent:
        config = self.config
        policy = RelayPolicy(config, auth_available=True)
        sender = user.lower()
        refusal = policy.check_mail(user, ip, user)
        if refusal is not None:
            return Sent(None, plain(refusal.reply))
        parsed = policy.check_number(upload.number.strip())
        if not isinstance(parsed, str):
            return Sent(None, plain(parsed.reply))
        # The sender's own settings ([senders]: from number, cover), as for a mail of theirs.
        settings = message_settings(config, sender, MessageOptions())
        if not upload.data:
            return Sent(None, "Choose a file to fax.", parsed)
        if not _FORM_ID.match(upload.form_id):
            return Sent(None, "The form is stale; open it again.", parsed)
        message_id = f"<{upload.form_id}@{MESSAGE_ID_DOMAIN}>"
        raw = build_message(config, user, parsed, upload, message_id)
        if len(raw) > config.smtp.max_message_bytes:
            return Sent(None, "The file is too large for this gateway.", parsed)
        if _short_of_space(config, 2 * len(raw)):
            return Sent(None, "The gateway is short of disk space; try again later.", parsed)
        try:
            checked = await self.documents.check(
                raw,
                cover=config.cover.for_message(settings.cover, settings.cover_template),
                office=self.office,
            )
        except DocumentError as exc:
            return Sent(None, str(exc), parsed)
        except ConversionBusy as exc:
            logger.warning("ui.document_check_busy", sender=sender, why=str(exc))
            return Sent(None, plain(replies.BUSY), parsed)
        except (WorkerDied, WorkersStopped) as exc:
            # Not the document's fault as far as we know: the user may send it again.
            logger.warning("ui.document_check_failed", error=str(exc))
            return Sent(None, plain(replies.TEMPORARY_FAILURE), parsed)
        limit = config.limits.faxes_per_sender_per_day
        daily = self._limit()
        async with daily.lock:
            # The SMTP side's open transactions count here (the shared limit's open work);
            # ours is committed before the lock is let go, so the SMTP side sees it stored.
            if limit > 0:
                over = await daily.check(sender=sender, user=user, limit=limit)
                if over is not None:
                    return Sent(None, plain(over.refusal.reply), parsed)
            since = time.time() - max(config.smtp.dedupe_window_seconds, 86400)
            resent = await self.db.run(find_resent_job, sender, message_id, (parsed,), since)
            if resent is not None:
                return Sent(resent, None, parsed)
            job_id = new_job_id()
            spool_path = await asyncio.to_thread(self.spool.write, job_id, raw)
            job = NewJob(
                id=job_id,
                sender=sender,
                auth_user=user,
                client_address=str(ip) if ip is not None else None,
                subject=checked.subject or "",
                message_id=message_id,
                from_number=settings.from_number,
                cover=settings.cover,
                cover_template=settings.cover_template,
                spool_path=spool_path,
                recipients=(parsed,),
            )
            try:
                for index, pdf in checked.converted.items():
                    await asyncio.to_thread(self.spool.write_converted, job_id, index, pdf)
                files = [(spool_path, raw)] + [
                    (self.spool.converted_path(job_id, index), pdf)
                    for index, pdf in checked.converted.items()
                ]
                await self.db.run(create_job, job, files=files)
            except BaseException:  # the message and its PDFs go: no row names them
                await asyncio.to_thread(self.spool.remove, spool_path)
                raise
        logger.info(
            "ui.fax_queued",
            job_id=job_id,
            sender=sender,
            user=user,
            recipients=[parsed],
            size=len(raw),
            client=str(ip),
        )
        try:
            self.wake()
        except Exception:
            logger.exception("ui.wake_failed")
        return Sent(job_id, None, parsed)


def _short_of_space(config: Config, needed: int) -> bool:
    floor = config.data.min_free_bytes
    return floor > 0 and DataDir(config.data.dir).free_bytes() - needed < floor
