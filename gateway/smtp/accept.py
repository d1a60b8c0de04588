"""From a message whose document passed to its 250: the spooled message awaited, its
converted PDFs written beside it, the job row committed with the other writes of the moment
(a resend of a queued job recognised in that same commit), the workers woken; or 4xx after
logging why not. Once begun it runs to the end even if the client hangs up or the server
stops; `drain` waits for every one at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from gateway import log
from gateway.config import Config
from gateway.document.workers import Checked
from gateway.failpoints import failpoint
from gateway.ops.metrics import Metrics
from gateway.queue.schedule import resource_error
from gateway.smtp import replies
from gateway.smtp.data import Received
from gateway.smtp.limits import DailyLimit
from gateway.smtp.options import message_settings
from gateway.smtp.replies import Reason
from gateway.smtp.transactions import Transaction
from gateway.store import Database
from gateway.store.blobs import File
from gateway.store.commit import GroupCommit
from gateway.store.jobs import insert_job_unless_resent
from gateway.store.records import NewJob
from gateway.store.spool import Spool

logger = log.get_logger(__name__)


class Acceptor:
    """Turns checked messages into committed jobs, one task each (for the SMTP handler)."""

    def __init__(
        self,
        config: Config,
        db: Database,
        spool: Spool,
        wake: Callable[[], None],
        *,
        commits: GroupCommit,
        daily_limit: DailyLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.spool = spool
        self.wake = wake
        # Job rows are committed in groups (shared with the webhook endpoint in the daemon).
        self.commits = commits
        # Its lock is held while a transaction whose job was committed is closed.
        self.daily_limit = daily_limit
        self.metrics = metrics
        self._accepting: set[asyncio.Task[str]] = set()

    def start(
        self,
        transaction: Transaction,
        received: Received,
        job_id: str,
        spooling: asyncio.Future[Path],
        checked: Checked,
        client: str | None,
    ) -> asyncio.Task[str]:
        """Begin accepting a message as job `job_id`: the task whose result is the reply."""
        accept = asyncio.ensure_future(
            self._accept(transaction, received, job_id, spooling, checked, client)
        )
        self._accepting.add(accept)
        accept.add_done_callback(self._accepting.discard)
        return accept

    async def _accept(
        self,
        transaction: Transaction,
        received: Received,
        job_id: str,
        spooling: asyncio.Future[Path],
        checked: Checked,
        client: str | None,
    ) -> str:
        """Spool, commit, wake: the reply, 250 with the job id, or 4xx after logging why not.

        Either way the transaction is closed at the end: committed, the store counts its faxes;
        failed, the client was told 451 (452 for a full disk) and nothing of it will be faxed.
        """
        try:
            with log.bound(job=job_id):
                spool_path = await spooling
                for index, pdf in checked.converted.items():
                    await asyncio.to_thread(self.spool.write_converted, job_id, index, pdf)
                failpoint("after_spool")
                sender = transaction.sender.lower()
                settings = message_settings(self.config, sender, transaction.options)
                job = NewJob(
                    id=job_id,
                    sender=sender,
                    auth_user=transaction.auth_user,
                    client_address=client,
                    subject=checked.subject or "",
                    message_id=checked.message_id or "",
                    from_number=settings.from_number,
                    spool_path=spool_path,
                    recipients=tuple(transaction.numbers),
                    cover=settings.cover,
                    cover_template=settings.cover_template,
                    resolution=settings.resolution,
                    notify=settings.notify,
                )
                # The row goes in with the other writes of this moment (one transaction, one
                # fsync); a resend (same sender, Message-ID and recipients as a queued job) is
                # recognised in that transaction, so two copies of one message in parallel
                # sessions make one job, and the second's file goes again.
                transaction.job_id = job_id
                # With the message and its PDFs: on a store nodes share, their shared copies
                # are committed with the row (store/blobs.py), the same one commit. (SQLite's
                # files are the truth: nothing is read back for it.)
                files: list[File] = []
                if self.db.shared:
                    raw = received.data or await asyncio.to_thread(spool_path.read_bytes)
                    files = [(spool_path, raw)] + [
                        (self.spool.converted_path(job_id, index), pdf)
                        for index, pdf in checked.converted.items()
                    ]
                resent = await self.commits.run(
                    insert_job_unless_resent, job, self._dedupe_since(checked), files=files
                )
                async with self.daily_limit.lock:
                    transaction.open = False
                if resent is not None:
                    await asyncio.to_thread(self.spool.remove, spool_path)
                    return self._resend(transaction, resent)
                logger.info(
                    "smtp.accepted",
                    reason=Reason.ACCEPTED,
                    sender=sender,
                    user=transaction.auth_user,
                    recipients=list(transaction.numbers),
                    pages=checked.pages,
                    size=received.size,
                    client=client,
                )
                if self.metrics is not None:
                    self.metrics.smtp_accepted.inc()
                try:
                    self.wake()
                except Exception:
                    # The job is committed; the workers' periodic scan will find it.
                    logger.exception("smtp.wake_failed")
                # The last moment before the 250: a kill here is the client's "250 lost in a
                # crash". aiosmtpd sends the reply after we return, so "after the 250" has no
                # hook; from the store's side it is the same state as here.
                failpoint("after_commit")
                return replies.queued(job_id)
        except Exception as exc:
            if resource_error(exc):
                logger.error(
                    "smtp.rejected",
                    stage="data",
                    reason=Reason.NO_STORAGE,
                    reply=replies.INSUFFICIENT_STORAGE,
                    error=str(exc),
                )
                if self.metrics is not None:
                    self.metrics.smtp_rejected.labels(reason=str(Reason.NO_STORAGE)).inc()
                return replies.INSUFFICIENT_STORAGE
            logger.exception("smtp.error", stage="data", reason=Reason.INTERNAL_ERROR)
            return replies.TEMPORARY_FAILURE
        finally:
            transaction.open = False
            with contextlib.suppress(OSError):
                await received.close()

    def _dedupe_since(self, checked: Checked) -> float | None:
        """Since when a queued job with this Message-ID makes this message a resend; None
        when resends are not looked for."""
        window = self.config.smtp.dedupe_window_seconds
        if window <= 0 or not checked.message_id:
            return None
        return time.time() - window

    def _resend(self, transaction: Transaction, job_id: str) -> str:
        """The answer to a resent message: 250 with the first job's id, and nothing faxed."""
        logger.info(
            "smtp.resent",
            job_id=job_id,
            sender=transaction.sender.lower(),
            recipients=list(transaction.numbers),
            hint="same sender, Message-ID and recipients as a queued job: not faxed again",
        )
        return replies.queued(job_id)

    async def drain(self) -> None:
        """Wait until every message being spooled has its 250 decided (for shutdown)."""
        while self._accepting:
            await asyncio.wait(list(self._accepting))
