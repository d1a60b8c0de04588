"""A mail to the administrator for every dead letter and every held job (`notify.admin`).

`AdminCopiesWorker` looks at the inbound faxes that are dead and the jobs that are held, and
queues one mail for each under a key naming the item and the moment it stopped
(`admin:held:<job id>:<ms>`, `admin:dead-letter:<inbound id>:<ms>`): found again each round, it
is queued once, and a job held again after a retry is a new mail. Scanning the store rather
than hooking the places that hold or dead-letter means a crash between the two loses no mail.
It looks back a week at most (and never past data.retention_days, after which the outbox's
record of a mail may be purged): an item older than that when the gateway first sees it was
told, or is in `fax-gateway queue list` and `queue dead-letter` anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from gateway import log
from gateway.config import Config
from gateway.inbound.compose import fax_moment, shown_number
from gateway.mailout.message import build_message
from gateway.mailout.outbox import MailingWorker, mail_status, queue_mail
from gateway.mailout.templates import MailRenderer
from gateway.store import Database
from gateway.store.inbound import InboundFax
from gateway.store.records import Fax, Job
from gateway.store.stats import dead_letters_since, held_jobs_since

logger = log.get_logger(__name__)

DAY = 86400.0
LOOK_BACK_DAYS = 7
HELD = "held"
DEAD_LETTER = "dead_letter"


def blind_copies(config: Config, kind: str, recipients: list[str]) -> list[str]:
    """notify.admin for a failure report (the "failed" kind), without those already on it:
    envelope recipients only, so the sender does not see the administrator's address."""
    if kind != "failed":
        return []
    taken = {address.lower() for address in recipients}
    return [a for a in dict.fromkeys(config.notify.admin) if a.lower() not in taken]


def look_back(config: Config) -> float:
    """Seconds back a held job or dead letter is still told."""
    days = config.data.retention_days or LOOK_BACK_DAYS
    return min(LOOK_BACK_DAYS, days) * DAY


def admin_message(
    config: Config, renderer: MailRenderer, kind: str, context: Mapping[str, object]
) -> EmailMessage:
    """A mail of `kind` to notify.admin. Rendering only: no I/O."""
    return build_message(
        from_address=config.relay.from_address,
        to=list(config.notify.admin),
        rendered=renderer.render(kind, context),
        message_id_domain=config.smtp.domain,
    )


async def queue_admin_mail(
    db: Database,
    config: Config,
    renderer: MailRenderer,
    outbox_dir: Path,
    *,
    key: str,
    kind: str,
    context: Mapping[str, object],
) -> bool:
    """Queue the mail once per `key`; True if queued just now."""
    if await mail_status(db, key) is not None:
        return False  # the common case, every round: no rendering
    message = admin_message(config, renderer, kind, context)
    return await queue_mail(
        db, outbox_dir, key=key, kind=kind, message=message, recipients=list(config.notify.admin)
    )


def _stamp(moment: float) -> int:
    return int(moment * 1000)


def held_context(job: Job, faxes: list[Fax]) -> dict[str, object]:
    return {
        "job_id": job.id,
        "sender": job.sender,
        "subject": job.subject,
        "numbers": [fax.recipient for fax in faxes],
        "error": job.error or "held",
        "time": datetime.fromtimestamp(job.updated_at, UTC),
    }


def dead_letter_context(fax: InboundFax) -> dict[str, object]:
    return {
        "inbound_id": fax.id,
        "carrier_id": fax.carrier_id,
        "from_number": shown_number(fax.from_number),
        "to_number": shown_number(fax.to_number),
        "pages": fax.pages,
        "received": fax_moment(fax),
        "error": fax.error or "dead",
        "kept": fax.file_path is not None,
        "time": datetime.fromtimestamp(fax.updated_at, UTC),
    }


class AdminCopiesWorker(MailingWorker):
    """Tells notify.admin of each held job and dead letter, once."""

    name = "admin-copies"

    async def run_once(self) -> int:
        if not self.config.notify.admin:
            return 0
        since = self.clock() - look_back(self.config)
        queued = 0
        for job, faxes in await self.db.run(held_jobs_since, since):
            key = f"admin:{HELD}:{job.id}:{_stamp(job.updated_at)}"
            if await self._queue(key, HELD, held_context(job, faxes)):
                logger.info("admin.held_told", job_id=job.id)
                queued += 1
        for fax in await self.db.run(dead_letters_since, since):
            key = f"admin:dead-letter:{fax.id}:{_stamp(fax.updated_at)}"
            if await self._queue(key, DEAD_LETTER, dead_letter_context(fax)):
                logger.info("admin.dead_letter_told", inbound_id=fax.id, carrier_id=fax.carrier_id)
                queued += 1
        return queued

    async def _queue(self, key: str, kind: str, context: Mapping[str, object]) -> bool:
        return await queue_admin_mail(
            self.db,
            self.config,
            self.renderer,
            self.outbox_dir,
            key=key,
            kind=kind,
            context=context,
        )
