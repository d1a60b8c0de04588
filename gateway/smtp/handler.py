"""The policy half of the SMTP server: aiosmtpd calls these hooks at each step of a session.

Relay policy at MAIL, number and toll-fraud checks at RCPT, the document at DATA (read by the
session into a spool draft, or held when small, gateway/smtp/data.py; made durable as the job's
message while a document worker checks it); then the job row committed, the workers woken
(gateway/smtp/accept.py), and only then `250 2.0.0 queued as <id>`. A deliberate refusal is 5xx
(4xx where retrying later can succeed); anything unexpected is `451 4.3.0` so the client keeps
the message and tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException

from gateway import log
from gateway.config import Config
from gateway.datadir import DataDir
from gateway.document.mime import DocumentError
from gateway.document.office import ConversionBusy, OfficeConverter
from gateway.document.pool import WorkerDied, WorkersStopped
from gateway.document.workers import Checked, DocumentWorkers
from gateway.mailout.templates import MailRenderer
from gateway.ops.metrics import Metrics
from gateway.smtp import explain, replies, subject
from gateway.smtp.accept import Acceptor
from gateway.smtp.auth import SmtpAuth, peer_of
from gateway.smtp.connections import client_key
from gateway.smtp.data import Received
from gateway.smtp.limits import DailyLimit, OverLimit
from gateway.smtp.options import MessageOptions, OptionError, message_settings
from gateway.smtp.policy import Refusal, RelayPolicy
from gateway.smtp.replies import Reason
from gateway.smtp.slots import DocumentSlots
from gateway.smtp.transactions import OpenTransactions, Transaction
from gateway.store import Database
from gateway.store.commit import GroupCommit
from gateway.store.records import new_job_id
from gateway.store.spool import Spool

logger = log.get_logger(__name__)


# What each kind of document problem answers. All are permanent: the same message would fail
# the same way tomorrow.
_DOCUMENT_REPLIES: dict[str, tuple[str, Reason]] = {
    "no_document": ("554 5.6.0", Reason.NO_DOCUMENT),
    "unsupported": ("554 5.6.0", Reason.UNSUPPORTED),
    "corrupt": ("554 5.6.0", Reason.CORRUPT),
    "too_many_pages": ("554 5.3.4", Reason.TOO_MANY_PAGES),
    "too_costly": ("554 5.3.4", Reason.TOO_COSTLY),
    "malformed": ("554 5.6.0", Reason.MALFORMED),
}


class FaxHandler:
    """aiosmtpd handler: one per server, shared by every session."""

    def __init__(
        self,
        config: Config,
        db: Database,
        spool: Spool,
        wake: Callable[[], None],
        *,
        documents: DocumentWorkers,
        auth: SmtpAuth | None = None,
        metrics: Metrics | None = None,
        renderer: MailRenderer | None = None,
        office: OfficeConverter | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
        self.config = config
        self.office = office or OfficeConverter.for_gateway(config)
        self.documents = documents
        self.metrics = metrics
        # Renders the explanation of a refused shared-address message (None: none is mailed).
        self.renderer = renderer
        self.db = db
        self.spool = spool
        self.wake = wake
        self.auth = auth
        self.policy = RelayPolicy(config, auth_available=auth is not None)
        self.transactions = OpenTransactions()
        # Held while the daily limit is checked and a recipient taken, and while a transaction
        # whose job was committed is closed: a check then sees each accepted fax exactly once,
        # from memory while its transaction is open (its job, if being committed, left out of
        # the store's count), from the store once closed, however many sessions run at once.
        self.daily_limit = DailyLimit(db, open_work=self.transactions)
        self.acceptor = Acceptor(
            config,
            db,
            spool,
            wake,
            commits=commits or GroupCommit(db),
            daily_limit=self.daily_limit,
            metrics=metrics,
        )
        self.document_slots = DocumentSlots(
            config.smtp.max_concurrent_data, config.smtp.max_concurrent_data_per_ip
        )

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded configuration from the next SMTP command on (SIGHUP)."""
        self.policy = RelayPolicy(config, auth_available=self.auth is not None)
        self.office.reconfigure(config.documents)
        self.document_slots.reconfigure(
            config.smtp.max_concurrent_data, config.smtp.max_concurrent_data_per_ip
        )
        self.config = config
        self.acceptor.config = config

    # -- EHLO and AUTH ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        lines = [
            line for line in responses if self.auth is not None or not _is_keyword(line, "AUTH")
        ]
        # aiosmtpd handles pipelined commands (it reads them one by one from a buffer) but does
        # not say so; our replies all carry enhanced codes (see GatewaySMTP.push).
        extra = [
            f"250-{keyword}"
            for keyword in ("PIPELINING", "ENHANCEDSTATUSCODES")
            if not any(_is_keyword(line, keyword) for line in lines)
        ]
        return [*lines[:-1], *extra, lines[-1]]

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        if self.auth is None:
            return replies.AUTH_UNAVAILABLE
        # A locked-out client is refused before it sends a password (tallied, not logged each).
        refusal = self.auth.refusal(server)
        return refusal if refusal is not None else MISSING  # MISSING: go on with the mechanism

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        assert self.auth is not None  # handle_AUTH refuses AUTH without users
        return await self.auth.auth_PLAIN(server, args)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        assert self.auth is not None
        return await self.auth.auth_LOGIN(server, args)

    # -- the transaction --------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        auth_user = _auth_user(session)
        refusal = self.policy.check_mail(address, peer_of(server), auth_user)
        if refusal is not None:
            return self._refuse("mail", refusal, server, sender=address, user=auth_user)
        if self._storage_short():
            refusal = Refusal(Reason.NO_STORAGE, replies.INSUFFICIENT_STORAGE)
            return self._refuse("mail", refusal, server, sender=address, user=auth_user)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.transactions.begin(envelope, Transaction(sender=address, auth_user=auth_user))
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        transaction = self.transactions.get(envelope)
        if transaction is None:
            # aiosmtpd asks for MAIL first, and MAIL records the transaction: a bug if reached.
            raise RuntimeError("RCPT without a transaction")
        recipient = self.policy.parse_recipient(address)
        if isinstance(recipient, Refusal):
            return self._refuse(
                "rcpt", recipient, server, sender=transaction.sender, recipient=address
            )
        try:
            options = transaction.options.merged(recipient.options)
        except OptionError as exc:
            refusal = Refusal(Reason.UNKNOWN_OPTION, replies.bad_option(str(exc)))
            return self._refuse(
                "rcpt", refusal, server, sender=transaction.sender, recipient=address
            )
        if recipient.number is None:
            transaction.subject_addressed = True
            return self._take(transaction, envelope, address, None, rcpt_options, options)
        parsed = recipient.number
        if parsed in transaction.numbers:
            # "15551234567@" and "+1 555 123 4567@" are one destination: one fax, not two.
            envelope.rcpt_tos.append(address)
            transaction.options = options
            return replies.DUPLICATE_RECIPIENT
        if len(transaction.numbers) >= self.config.smtp.max_recipients:
            refusal = Refusal(Reason.TOO_MANY_RECIPIENTS, replies.TOO_MANY_RECIPIENTS)
            return self._refuse(
                "rcpt", refusal, server, sender=transaction.sender, recipient=parsed
            )
        limit = self.config.limits.faxes_per_sender_per_day
        if limit <= 0:
            return self._take(transaction, envelope, address, parsed, rcpt_options, options)
        async with self.daily_limit.lock:
            over = await self._over_limit(transaction)
            if over is not None:
                return self._refuse(
                    "rcpt",
                    over.refusal,
                    server,
                    sender=transaction.sender,
                    user=transaction.auth_user,
                    sent=over.sent,
                )
            return self._take(transaction, envelope, address, parsed, rcpt_options, options)

    def _take(
        self,
        transaction: Transaction,
        envelope: Envelope,
        address: str,
        number: str | None,
        rcpt_options: list[str],
        options: MessageOptions,
    ) -> str:
        transaction.options = options
        if number is not None:
            transaction.numbers.append(number)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def _over_limit(self, transaction: Transaction) -> OverLimit | None:
        """Whether one more fax of `transaction` passes the daily limit; hold its lock."""
        return await self.daily_limit.check(
            sender=transaction.sender,
            user=transaction.auth_user,
            limit=self.config.limits.faxes_per_sender_per_day,
        )

    async def _read_subject(self, transaction: Transaction, checked: Checked) -> Refusal | Checked:
        """Mail to the shared address: take the Subject's numbers as RCPT would take them;
        the refusal, or `checked` with the rest of the Subject as its subject."""
        transaction.subject = checked.subject
        transaction.message_id = checked.message_id
        async with self.daily_limit.lock:
            outcome = await subject.take_numbers(
                checked.subject,
                transaction.numbers,
                policy=self.policy,
                config=self.config,
                over_limit=lambda: self._over_limit(transaction),
            )
        transaction.refused_numbers = outcome.refused
        return outcome.refusal or replace(checked, subject=outcome.rest)

    def forget(self, envelope: Envelope | None) -> None:
        """The session of `envelope` ended: its transaction no longer holds any of the limit."""
        self.transactions.forget(envelope)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # The message, read by the session into a spool draft or held (gateway/smtp/data.py).
        received = getattr(server, "received", None)
        # Document work costs memory and CPU per message (a 24 MB message, a large image): at
        # most smtp.max_concurrent_data at once, smtp.max_concurrent_data_per_ip of them for
        # one client; past that the client tries again later.
        client = getattr(server, "client", None) or client_key(peer_of(server))
        full = self.document_slots.refusal(client)
        if full is not None:
            transaction = self.transactions.get(envelope)
            reply = replies.BUSY if full == "total" else replies.BUSY_FROM_CLIENT
            sender = transaction.sender if transaction is not None else None
            return self._refuse("data", Refusal(Reason.BUSY, reply), server, sender=sender)
        async with self.document_slots.held(client):
            reply = await self._data(server, envelope, received)
        transaction = self.transactions.get(envelope)
        if transaction is not None and transaction.subject_addressed and received is not None:
            reply = await self._explained(transaction, received, reply)
        return reply

    async def _explained(self, transaction: Transaction, received: Received, reply: str) -> str:
        """The reply to a message to the shared address, and its explanation by mail."""
        if self.renderer is None:
            return reply
        # The message itself only names an explanation that has no Message-ID to go by.
        raw = b"" if transaction.message_id else await received.read()
        return await explain.explained_reply(
            self.db,
            self.config,
            self.renderer,
            self.wake,
            sender=transaction.sender,
            auth_user=transaction.auth_user,
            subject=transaction.subject,
            message_id=transaction.message_id,
            raw=raw,
            reply=reply,
            refused=transaction.refused_numbers,
            faxed=transaction.numbers,
        )

    async def _data(self, server: SMTP, envelope: Envelope, received: Received | None) -> str:
        transaction = self.transactions.get(envelope)
        spooling: asyncio.Future[Path] | None = None
        try:
            if received is None:
                raise RuntimeError("DATA without a received message")
            if transaction is None or not (transaction.numbers or transaction.subject_addressed):
                raise RuntimeError("DATA without accepted recipients")
            if received.size > self.config.smtp.max_message_bytes:
                # The session enforces the limit while reading; this only guards a change there.
                refusal = Refusal(
                    Reason.TOO_BIG, replies.too_big(self.config.smtp.max_message_bytes)
                )
                return self._refuse("data", refusal, server, sender=transaction.sender)
            # The spool file, its document and its mails need room: twice the message, plus the
            # floor that keeps the store and the other queues writable.
            if self._storage_short(2 * received.size):
                refusal = Refusal(Reason.NO_STORAGE, replies.INSUFFICIENT_STORAGE)
                return self._refuse("data", refusal, server, sender=transaction.sender)
            # The message is made durable as the job's (fsync, link, fsync of the directory)
            # while the worker reads it: the disk's wait and the check overlap instead of
            # following each other. A refused message's file is removed again.
            job_id = new_job_id()
            spooling = asyncio.ensure_future(asyncio.to_thread(received.keep, job_id))
            # In a worker process with a memory and time budget (gateway/document/pool.py):
            # a message that costs too much to read is refused, not allowed to take the daemon.
            try:
                settings = message_settings(self.config, transaction.sender, transaction.options)
                # Office files are converted now, before the 250, so a file LibreOffice cannot
                # read is refused naming it; the PDFs are spooled with the message.
                checked = await self.documents.check(
                    received.document,
                    cover=self.config.cover.for_message(settings.cover, settings.cover_template),
                    office=self.office,
                )
                if transaction.subject_addressed:
                    read = await self._read_subject(transaction, checked)
                    if isinstance(read, Refusal):
                        refused = [n.written for n in transaction.refused_numbers]
                        return self._refuse(
                            "data", read, server, sender=transaction.sender, refused=refused
                        )
                    checked = read
            except DocumentError as exc:
                code, reason = _DOCUMENT_REPLIES.get(exc.kind, ("554 5.6.0", Reason.MALFORMED))
                refusal = Refusal(reason, replies.document_rejected(code, str(exc)))
                return self._refuse("data", refusal, server, sender=transaction.sender)
            except ConversionBusy as exc:
                refusal = Refusal(Reason.BUSY, replies.BUSY)
                return self._refuse(
                    "data", refusal, server, sender=transaction.sender, why=str(exc)
                )
            except (WorkerDied, WorkersStopped) as exc:
                # Not the message's fault as far as we know: the client tries again later.
                logger.warning("smtp.document_check_failed", error=str(exc))
                return replies.TEMPORARY_FAILURE
            ip = peer_of(server)
            client = str(ip) if ip is not None else None
            transaction.accepting = True
            received.taken = True
            accept = self.acceptor.start(transaction, received, job_id, spooling, checked, client)
        except Exception:
            logger.exception("smtp.error", stage="data", reason=Reason.INTERNAL_ERROR)
            return replies.TEMPORARY_FAILURE
        finally:
            if spooling is not None and (received is None or not received.taken):
                await asyncio.shield(self._unspool(spooling))
        # Once spooling starts it runs to the end even if the client hangs up or the server
        # stops: a job half-made (file without row) helps no one. A client that vanished before
        # our 250 will send the message again; that duplicate is the price SMTP makes everyone
        # pay (RFC 1047), and the smaller one than losing a message.
        return await asyncio.shield(accept)

    async def _unspool(self, spooling: asyncio.Future[Path]) -> None:
        """A refused message's spool file goes again, once its write has ended."""
        try:
            path = await spooling
        except Exception:
            return  # not written: nothing to remove (the draft's own name goes with the session)
        try:
            await asyncio.to_thread(self.spool.remove, path)
        except Exception:
            # Without a row it is an orphan, which the next start removes.
            logger.exception("smtp.unspool_failed", path=str(path))

    def _storage_short(self, needed: int = 0) -> bool:
        """Whether data.dir has less than data.min_free_bytes left (after `needed` more)."""
        floor = self.config.data.min_free_bytes
        if floor <= 0:
            return False
        return DataDir(self.config.data.dir).free_bytes() - needed < floor

    async def handle_exception(self, error: Exception) -> str:
        """Any exception escaping a hook or aiosmtpd itself: 451, never 500, so mail is kept."""
        if isinstance(error, TLSSetupException):
            cause = error.__cause__ or error
            logger.info("smtp.tls_failed", error=f"{type(cause).__name__}: {cause}")
        else:
            logger.error("smtp.error", reason=Reason.INTERNAL_ERROR, exc_info=error)
        return replies.TEMPORARY_FAILURE

    def _refuse(self, stage: str, refusal: Refusal, server: SMTP, **fields: Any) -> str:
        """Log the canonical line of a refusal, count it, and return its reply."""
        logger.info(
            "smtp.rejected",
            stage=stage,
            reason=refusal.reason,
            reply=refusal.reply,
            client=str(peer_of(server)),
            **fields,
        )
        if self.metrics is not None:
            self.metrics.smtp_rejected.labels(reason=str(refusal.reason)).inc()
        return refusal.reply

    async def drain(self) -> None:
        """Wait until every message being spooled has its 250 decided (for shutdown)."""
        await self.acceptor.drain()


def _is_keyword(line: str, keyword: str) -> bool:
    words = line[4:].split(None, 1)
    return bool(words) and words[0].upper() == keyword


def _auth_user(session: Session) -> str | None:
    if session.authenticated and isinstance(session.auth_data, str):
        return session.auth_data
    return None
