"""Delivery reports: the sender of each outbound fax learns how it went, by mail, once.

Kinds, after HylaFAX's fixed vocabulary of outcomes, one template set each:
- delivered: the carrier reports success (notify.on_success);
- failed: the carrier reports failure, or the fax failed before reaching it (a refused POST,
  too many pages, a carrier unreachable past the queue lifetime) (notify.on_failure);
- queued: the fax is at the carrier and not finished yet (notify.on_queued, off by default);
- retry: a try failed on the line and the fax will be sent again at a given time
  (fax.resubmit_attempts; notify.on_retry, off by default), once per resubmission.
The final report (delivered or failed) goes out once however many times the fax was tried,
and says how many (`tries`).
A message's `+notify=none|failure|all` address option (the job's `notify`) overrides the
switches for its faxes: no report, failures only, or every kind.

A report goes to the envelope sender of the original message (notify.cc in copy, and for a
failure notify.admin in blind copy: on the envelope only; a failure the sender is not told of,
by their settings or for want of a usable address, goes to notify.admin alone), threads under
it (In-Reply-To/References = its Message-ID), keeps the user's subject in its own, and attaches
the faxed document as PDF unless notify.attach_document is off, and (delivered and failed) the
transmission report of gateway/outbound/transmission.py unless notify.transmission_report is
off. The sender's privacy mode (notify.attach, or theirs in [senders]) says whether those go
in clear, encrypted or not at all (gateway/mailout/privacy.py). Each is queued in the outbox
under `report:<fax id>:<kind>`, so however often it is asked for it goes out once.

`ReportsWorker` finds every fax that reached a final state, whichever way (webhook,
reconciler, submit stage, failed or cancelled job), through `claim_reports`, and marks it
reported once its mail is queued: a crash in between queues the mail again under the same key,
which is a no-op, and the stored document is not cleaned before that mark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import unicodedata
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from gateway import log
from gateway.addresses import clean_address
from gateway.admin.copies import blind_copies
from gateway.carrier.faxerrors import describe
from gateway.carrier.status import Outcome
from gateway.config import Config
from gateway.document import kinds
from gateway.document.convert import images_to_pdf, natural_layout, tiff_to_pdf
from gateway.document.pool import WorkersStopped
from gateway.document.workers import DocumentWorkers
from gateway.failpoints import failpoint
from gateway.mailout.message import MailAttachment, build_message, clean_subject
from gateway.mailout.outbox import MailingWorker, mail_status, queue_mail
from gateway.mailout.privacy import Privacy, protect, report_privacy, status_page_url
from gateway.mailout.templates import MailRenderer
from gateway.ops.metrics import Metrics
from gateway.outbound.transmission import render_in_worker
from gateway.queue.foreground import give_way
from gateway.queue.schedule import EXPIRED, Clock
from gateway.store import Database
from gateway.store.blobs import SharedFiles
from gateway.store.claims import give_back
from gateway.store.faxes import (
    REPORTS,
    claim_reports,
    defer_report,
    mark_reported,
    next_report_due,
)
from gateway.store.jobs import get_job
from gateway.store.records import Fax, FaxState, Job

logger = log.get_logger(__name__)

DELIVERED = "delivered"
FAILED = "failed"
QUEUED = "queued"
RETRY = "retry"

_BATCH = 50


def outcome_kind(fax: Fax) -> str | None:
    """The report kind for a final fax; None for one not final, or cancelled by an operator.

    A cancelled fax is not reported: the operator who cancelled it decided what the sender is
    told, and the failure template's advice (try again / check the number) would be wrong.
    """
    if fax.state is FaxState.DELIVERED:
        return DELIVERED
    if fax.state is FaxState.FAILED:
        return FAILED
    return None


def wanted(config: Config, kind: str, job: Job | None = None) -> bool:
    """Whether the sender gets `kind` of report: the job's own notify (`+notify=` in its
    address: none, failure or all) where it has one, else the notify.on_* switches."""
    override = job.notify if job is not None else None
    if override == "none":
        return False
    if override == "failure":
        return kind == FAILED
    if override == "all":
        return True
    notify = config.notify
    return {
        DELIVERED: notify.on_success,
        FAILED: notify.on_failure,
        QUEUED: notify.on_queued,
        RETRY: notify.on_retry,
    }[kind]


def report_key(fax: Fax, kind: str) -> str:
    """The outbox key of a report: one per fax and kind, one per resubmission for retry, and
    anew for each round an operator's retry starts (a fax that fails again is reported again)."""
    key = f"report:{fax.id}:{kind}"
    if kind == RETRY:
        key += f":{fax.resubmits}"
    if fax.rounds:
        key += f":round{fax.rounds}"
    return key


async def report_fax(
    db: Database,
    config: Config,
    renderer: MailRenderer,
    outbox_dir: Path,
    job: Job,
    fax: Fax,
    *,
    kind: str | None = None,
    documents: DocumentWorkers | None = None,
) -> bool:
    """Queue the report on `fax` (kind from its state unless given); True if queued just now.
    `documents` render its transmission report (needed for delivered and failed reports
    with notify.transmission_report); WorkersStopped when they are stopping.

    False when notify settings do not want it, there is nobody to send it to, or it was queued
    before. A failure the sender gets no report of still goes to notify.admin, alone
    (`admin_report_key`); otherwise the administrator is a blind copy of the sender's.
    """
    kind = kind or outcome_kind(fax)
    if kind is None:
        return False
    if wanted(config, kind, job):
        key = report_key(fax, kind)
        # Cheap check first: no document read, no rendering for a report already queued.
        if await mail_status(db, key) is not None:
            return False
        to, cc = report_recipients(config, job)
        if to:
            copies = blind_copies(config, kind, [*to, *cc])
            return await _queue_report(
                db, config, renderer, outbox_dir, job, fax, kind, key, to, cc, copies, documents
            )
        logger.warning("report.no_recipient", fax_id=fax.id, job_id=job.id, sender=job.sender)
    # No report for the sender (their +notify, the notify.on_* switch, no usable address):
    # notify.admin still gets its copy of a failure, alone, under a key of its own.
    admin = blind_copies(config, kind, [])
    if not admin:
        return False
    key = admin_report_key(fax, kind)
    if await mail_status(db, key) is not None:
        return False
    return await _queue_report(
        db, config, renderer, outbox_dir, job, fax, kind, key, admin, [], [], documents
    )


def admin_report_key(fax: Fax, kind: str) -> str:
    """The outbox key of notify.admin's copy of a report the sender does not get."""
    return f"{report_key(fax, kind)}:admin"


async def _queue_report(
    db: Database,
    config: Config,
    renderer: MailRenderer,
    outbox_dir: Path,
    job: Job,
    fax: Fax,
    kind: str,
    key: str,
    to: list[str],
    cc: list[str],
    blind: list[str],
    documents: DocumentWorkers | None,
) -> bool:
    if job.document_path is not None and kind not in (QUEUED, RETRY):
        # The document this node has, or the store's copy of it (another node prepared it).
        local = await SharedFiles.of(config, db).fetch(job.document_path)
        job = dataclasses.replace(job, document_path=local)
    transmission = None
    if kind in (DELIVERED, FAILED) and config.notify.transmission_report:
        if documents is None:
            raise ValueError("a final report's transmission report needs the document workers")
        transmission = await render_in_worker(
            documents,
            config,
            job,
            fax,
            moment=_moment(fax, kind),
            description=_description(fax, kind),
            privacy=report_privacy(config, job.sender),
        )
    message = await asyncio.to_thread(
        compose_report, config, renderer, job, fax, kind, to, cc, transmission=transmission
    )
    queued = await queue_mail(
        db, outbox_dir, key=key, kind=kind, message=message, recipients=[*to, *cc, *blind]
    )
    if queued:
        attach = report_privacy(config, job.sender).attach
        logger.info(
            "report.queued", kind=kind, fax_id=fax.id, job_id=job.id, attach=attach, key=key
        )
    return queued


def report_recipients(config: Config, job: Job) -> tuple[list[str], list[str]]:
    """(To, Cc): the envelope sender and notify.cc. Without a usable sender (logged), the
    copies are the only recipients."""
    cc = list(dict.fromkeys(config.notify.cc))
    try:
        sender = clean_address(job.sender)
    except ValueError:
        logger.warning("report.bad_sender", job_id=job.id, sender=job.sender)
        return cc, []
    return [sender], [address for address in cc if address != sender]


def compose_report(
    config: Config,
    renderer: MailRenderer,
    job: Job,
    fax: Fax,
    kind: str,
    to: list[str],
    cc: list[str],
    *,
    transmission: MailAttachment | None = None,
) -> EmailMessage:
    """The report mail. Blocking (reads and may convert the document): run in a thread.

    What it carries follows the sender's privacy mode (gateway/mailout/privacy.py): the
    document (notify.attach_document) and `transmission`, the transmission report already
    rendered and locked (gateway/outbound/transmission.py `render_in_worker`: delivered and
    failed reports, notify.transmission_report), both encrypted under "encrypted-pdf"; under
    "none" neither the document nor a picture of it (the transmission report goes without
    page 1).
    """
    privacy = report_privacy(config, job.sender)
    moment = _moment(fax, kind)
    context: dict[str, object] = {
        "number": fax.recipient,
        "pages": _pages(job, fax, kind),
        "duration": fax.duration,
        "attempts": fax.carrier_attempts,
        "carrier_id": fax.carrier_id,
        "time": moment,
        "subject": job.subject,
        "sender": job.sender,
        "job_id": job.id,
        "attach": privacy.attach,
        "status_url": status_page_url(config),
        # Times the fax was sent (1, or more once resubmitted after failures on the line).
        "tries": fax.resubmits + 1,
    }
    if kind in (FAILED, RETRY):
        context.update(failure_details(fax))
    document: MailAttachment | None = None
    report = transmission if kind not in (QUEUED, RETRY) else None
    if kind not in (QUEUED, RETRY):
        read = _read_document(job) if privacy.carries_document else None
        document = _document(config, job, fax, privacy, read)
    attachments = [a for a in (document, report) if a is not None]
    context["document_attached"] = document is not None
    context["transmission_report_attached"] = report is not None
    if kind == RETRY:
        context["tries"] = fax.resubmits
        context["next_try"] = datetime.fromtimestamp(fax.next_attempt_at, UTC)
        context["tries_left"] = max(0, config.fax.resubmit_attempts - fax.resubmits + 1)
    rendered = renderer.render(kind, context)
    return build_message(
        from_address=config.relay.from_address,
        to=to,
        cc=cc,
        rendered=rendered,
        attachments=attachments,
        in_reply_to=job.message_id or None,
        message_id_domain=config.smtp.domain,
    )


def _moment(fax: Fax, kind: str) -> datetime | None:
    """The time a report gives: when the fax was submitted (queued), else when it ended."""
    moment = fax.submitted_at if kind == QUEUED else (fax.finished_at or fax.updated_at)
    return datetime.fromtimestamp(moment, UTC) if moment else None


def _description(fax: Fax, kind: str) -> str:
    """The result's words on the transmission report."""
    if kind in (FAILED, RETRY):
        return str(failure_details(fax)["error_description"] or "delivered")
    return "delivered"


def _pages(job: Job, fax: Fax, kind: str) -> int | None:
    """Pages for the report: those the carrier got through for a failure, the document's
    while queued (the carrier counts 0 until it is done), the carrier's count once delivered
    (the document's if the carrier gave none)."""
    if kind == FAILED:
        return fax.pages
    if kind == QUEUED:
        return job.pages
    return fax.pages or job.pages


def failure_details(fax: Fax) -> dict[str, object]:
    """error_code, error_description and retry_may_help for the failed template.

    A known code is described from the carrier's table (with our retry advice), whatever the
    carrier wrote beside it; an unknown code keeps the carrier's own words when it gave some,
    cut to one clean line (`plain_words`). No code on a fax the carrier never took (no carrier
    id) means the gateway failed it: the carrier refused the request, the document broke a
    limit, or the carrier stayed unreachable for the whole queue lifetime. Each has been retried
    as far as retrying helps, so sending the same again is not advised.
    """
    info = describe(fax.error_code)
    advice = info.retryable
    words = plain_words(fax.error_description)
    if fax.error_code is None:
        description = words or info.description
        advice = fax.carrier_id is not None
    elif info.description.startswith("unknown fax error") and words:
        description = words
    else:
        description = info.description
    return {
        "error_code": fax.error_code,
        "error_description": description,
        "retry_may_help": advice,
    }


# The carrier's words go into the report's subject before the sender's own subject: short
# enough to leave that in view (subjects stop at 200 characters).
MAX_WORDS_CHARS = 120


def plain_words(text: str | None) -> str | None:
    """A stranger's description as one line of at most MAX_WORDS_CHARS characters, without
    control, format (zero-width) or bidi characters; None if nothing is left."""
    if not text:
        return None
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return clean_subject(visible, limit=MAX_WORDS_CHARS) or None


def _document(
    config: Config, job: Job, fax: Fax, privacy: Privacy, read: tuple[bytes, str] | None
) -> MailAttachment | None:
    """The faxed document (`read`) as a PDF attachment, encrypted if the mode says so; None
    when not wanted, not allowed, no longer there, or not a PDF where only an encrypted PDF
    may go."""
    if not config.notify.attach_document or not privacy.carries_document or read is None:
        return None
    data, kind = read
    # A TIFF always goes as a PDF; a picture too when it is to be encrypted (only a PDF can).
    if kind == kinds.TIFF or (privacy.encrypted and kind in (kinds.PNG, kinds.JPEG)):
        try:
            if kind == kinds.TIFF:
                data = tiff_to_pdf(data)
            else:
                data = images_to_pdf(data, layout=natural_layout(), first_frame_only=True)
            kind = kinds.PDF
        except Exception as exc:
            logger.warning("report.convert_failed", job_id=job.id, error=str(exc))
    digits = "".join(c for c in fax.recipient if c.isdigit())
    attachment = MailAttachment(f"fax-to-{digits}{kinds.extension(kind)}", kind, data)
    try:
        return protect(attachment, privacy)
    except Exception as exc:
        # The report matters more than its attachment: it goes without, never in clear.
        logger.warning("report.document_left_out", job_id=job.id, error=_reason(exc))
        return None


def _read_document(job: Job) -> tuple[bytes, str] | None:
    """The document's bytes and type, or None (logged) when it is no longer readable."""
    if job.document_path is None:
        return None
    try:
        data = Path(job.document_path).read_bytes()
    except OSError as exc:
        logger.warning("report.document_unreadable", job_id=job.id, error=str(exc))
        return None
    return data, kinds.sniff(data) or job.document_type or "application/octet-stream"


def _reason(exc: Exception) -> str:
    # The exception's type and message only: never the data it was given.
    return f"{type(exc).__name__}: {exc}"[:300]


class Reporter:
    """What the events worker needs: queued reports for faxes still at the carrier."""

    def __init__(
        self, *, config: Config, db: Database, renderer: MailRenderer, outbox_dir: Path
    ) -> None:
        self.config = config
        self.db = db
        self.renderer = renderer
        self.outbox_dir = outbox_dir

    async def report(self, job: Job, fax: Fax, *, kind: str | None = None) -> bool:
        return await report_fax(
            self.db, self.config, self.renderer, self.outbox_dir, job, fax, kind=kind
        )

    async def queued(self, fax: Fax) -> bool:
        """The queued report (notify.on_queued, or the job's `+notify=all`) for a fax the
        carrier has not finished."""
        if fax.final:
            return False
        job = await self.db.run(get_job, fax.job_id)
        if job is None or not wanted(self.config, QUEUED, job):
            return False
        return await self.report(job, fax, kind=QUEUED)

    async def resubmission(self, fax: Fax, outcome: Outcome, carrier_id: str) -> bool:
        """After a carrier status was recorded (a webhook, or the POST's own answer): whether
        that try of `fax` (carrier id `carrier_id`) failed on the line and the fax now waits
        to be resubmitted; if so its interim report is queued. A replay lands here again and
        the report's outbox key makes it once."""
        if not (
            outcome is Outcome.FAILED
            and fax.state is FaxState.PENDING
            and fax.carrier_id == carrier_id
        ):
            return False
        logger.info(
            "fax.resubmit_scheduled",
            fax_id=fax.id,
            resubmits=fax.resubmits,
            due_at=fax.next_attempt_at,
            error_code=fax.error_code,
        )
        await self.retry(fax)
        return True

    async def resubmitting(self, fax: Fax, now: float) -> bool:
        """Before the POST of a resubmission (outbound/submit.py): the interim report of the
        failure it sends the fax again after, unless that one was told already.

        A pickup with resubmits > 0 and no POST yet in its round is not always a resubmission
        waiting since a failure: an operator's retry starts a round (`rounds`) with the counts
        as they were. A fax the carrier failed for good starts it without a carrier id (no
        failure waits to be told: nothing was scheduled); one held while it waited to be
        resubmitted goes on with that resubmission, whose interim report went out under the
        round it failed in. The Nth resubmission has one failure, told once, in any round.

        The next try it names is `now`, the POST about to be made: the claimed fax's
        next_attempt_at is when the submit worker's claim on it runs out (minutes later)."""
        if fax.carrier_id is None:
            return False
        for earlier in range(fax.rounds):
            told = report_key(dataclasses.replace(fax, rounds=earlier), RETRY)
            if await mail_status(self.db, told) is not None:
                return False
        return await self.retry(dataclasses.replace(fax, next_attempt_at=now))

    async def retry(self, fax: Fax) -> bool:
        """The interim report (notify.on_retry, or the job's `+notify=all`) for a fax waiting
        to be resubmitted."""
        if fax.final:
            return False
        job = await self.db.run(get_job, fax.job_id)
        if job is None or not wanted(self.config, RETRY, job):
            return False
        return await self.report(job, fax, kind=RETRY)


class ReportsWorker(MailingWorker):
    """Reports every fax that reached a final state, once; `run_once` returns how many."""

    name = "reports"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        renderer: MailRenderer,
        outbox_dir: Path,
        documents: DocumentWorkers,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            config=config, db=db, clock=clock, renderer=renderer, outbox_dir=outbox_dir
        )
        self.documents = documents
        self.metrics = metrics

    async def run_once(self) -> int:
        done = 0
        for _ in range(_BATCH):
            # The stages on the way to the carrier go first (bounded): before each claim, so
            # nothing waits claimed.
            await give_way()
            # One report per claim: an interruption charges only the report it interrupted.
            claimed, held = await self.db.run(
                claim_reports, self.clock(), 1, self.schedule.max_pickups
            )
            for fax, job in held:
                logger.error(
                    "report.held", job_id=job.id, fax_id=fax.id, pickups=fax.report_pickups
                )
            done += len(held)
            if not claimed:
                if held:
                    continue
                break
            fax, job = claimed[0]
            with log.bound(job_id=job.id, fax_id=fax.id):
                if not await self._report(fax, job):
                    break  # stopping: the claim was given back
            done += 1
        return done

    async def next_due(self) -> float | None:
        return await self.db.run(next_report_due)

    async def _report(self, fax: Fax, job: Job) -> bool:
        """Report one fax; False when the daemon is stopping (its claim given back)."""
        try:
            await report_fax(
                self.db,
                self.config,
                self.renderer,
                self.outbox_dir,
                job,
                fax,
                documents=self.documents,
            )
        except WorkersStopped:
            # The daemon is stopping: taken up again at the next start, uncounted.
            await self.db.run(give_back, REPORTS, fax.id)
            return False
        except Exception as exc:
            # A broken template override, a full disk: tried again by the schedule.
            error = f"{type(exc).__name__}: {exc}"
            now = self.clock()
            due = self.schedule.retry(fax.report_attempts + 1, fax.finished_at or fax.updated_at)
            if due is None:
                logger.exception("report.expired", attempts=fax.report_attempts + 1)
                await self.db.run(mark_reported, fax.id, now, f"{EXPIRED}: {error}")
                return True
            attempts = await self.db.run(defer_report, fax.id, error, due, now)
            logger.exception("report.failed", failures=attempts, delay=round(due - now, 1))
            return True
        failpoint("after_report_queued")
        if await self.db.run(mark_reported, fax.id, self.clock()):
            self._count(fax)
        return True

    def _count(self, fax: Fax) -> None:
        if self.metrics is None:
            return
        since = None
        if fax.submitted_at is not None and fax.finished_at is not None:
            since = fax.finished_at - fax.submitted_at
        self.metrics.fax_final(
            str(fax.state), error_code=fax.error_code, seconds_since_submitted=since
        )
